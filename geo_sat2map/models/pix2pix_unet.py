"""The public pix2pix ``UnetGenerator`` (unet_256), state_dict-compatible with its checkpoints.

Blocks nest inside-out and each holds ``self.model = nn.Sequential(...)``, which is what makes keys read
``model.model.1.model.3...``. In the public code the block's first layer is ``LeakyReLU(inplace=True)``
applied to the block input, so the skip connection it concatenates is the *activated* input; we compute
that explicitly (no in-place ops) so weights trained there behave identically here.
"""

from __future__ import annotations

import torch
from torch import nn


class UnetSkipBlock(nn.Module):
    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        submodule: nn.Module | None = None,
        *,
        input_nc: int | None = None,
        outermost: bool = False,
        innermost: bool = False,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, 4, 2, 1, bias=False)
        if outermost:
            assert submodule is not None
            layers: list[nn.Module] = [
                down_conv,
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=False),
                nn.BatchNorm2d(outer_nc),
            ]
        else:
            assert submodule is not None
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                nn.BatchNorm2d(inner_nc),
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False),
                nn.BatchNorm2d(outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        activated = self.model[0](x)
        out = activated
        for layer in list(self.model)[1:]:
            out = layer(out)
        return torch.cat([activated, out], dim=1)


class Pix2PixUnet(nn.Module):
    """unet_256: 8 stride-2 levels, so input sides must be multiples of 256."""

    def __init__(self, ngf: int = 64, in_channels: int = 3, out_channels: int = 3, num_downs: int = 8) -> None:
        super().__init__()
        self.ngf = ngf
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, block, use_dropout=True)
        block = UnetSkipBlock(ngf * 4, ngf * 8, block)
        block = UnetSkipBlock(ngf * 2, ngf * 4, block)
        block = UnetSkipBlock(ngf, ngf * 2, block)
        self.model = UnetSkipBlock(out_channels, ngf, block, input_nc=in_channels, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
