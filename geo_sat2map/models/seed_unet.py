"""The seed project's ``Generator(in_channels=3, features=64)`` (``gen.pth.tar``).

Differs from the public pix2pix U-Net: biased first/bottleneck/last convs, reflect padding in the
encoder, skips taken after LeakyReLU and concatenated decoder-first.
"""

from __future__ import annotations

import torch
from torch import nn


class SeedBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, *, down: bool, use_dropout: bool = False) -> None:
        super().__init__()
        conv = (
            nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False, padding_mode="reflect")
            if down
            else nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False)
        )
        self.conv = nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2) if down else nn.ReLU())
        self.dropout = nn.Dropout(0.5) if use_dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(x))


class SeedUnet(nn.Module):
    def __init__(self, features: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        f = features
        self.features = features
        self.initial_down = nn.Sequential(
            nn.Conv2d(in_channels, f, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2)
        )
        widths = [f, 2 * f, 4 * f, 8 * f, 8 * f, 8 * f, 8 * f]
        for i in range(6):
            setattr(self, f"down{i + 1}", SeedBlock(widths[i], widths[i + 1], down=True))
        self.bottleneck = nn.Sequential(nn.Conv2d(8 * f, 8 * f, 4, 2, 1), nn.ReLU())
        up_in = [8 * f, 16 * f, 16 * f, 16 * f, 16 * f, 8 * f, 4 * f]
        up_out = [8 * f, 8 * f, 8 * f, 8 * f, 4 * f, 2 * f, f]
        for i in range(7):
            setattr(self, f"up{i + 1}", SeedBlock(up_in[i], up_out[i], down=False, use_dropout=i < 3))
        self.final_up = nn.Sequential(nn.ConvTranspose2d(2 * f, in_channels, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.initial_down(x)]
        for i in range(1, 7):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        y = self.up1(self.bottleneck(skips[-1]))
        for i in range(2, 8):
            y = getattr(self, f"up{i}")(torch.cat([y, skips[7 - i + 1]], dim=1))
        return self.final_up(torch.cat([y, skips[0]], dim=1))
