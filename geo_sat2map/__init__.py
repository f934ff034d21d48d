"""geo-sat2map: georeferenced satellite imagery to map rasters with a pix2pix GAN."""

__version__ = "0.1.0"
