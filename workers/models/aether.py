"""A compact 3D-aware triplane generator (mapping z -> w, three feature planes, volume rendering,
super-resolution), in the style of EG3D-like generators.

Deterministic: the same seed, camera and weights give the same image. Weights
come from a safetensors checkpoint or, without one, from a fixed seed
("reference weights", untrained).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_SEED = 20261124


@dataclass(frozen=True)
class Profile:
    z_dim: int
    w_dim: int
    plane_res: int  # side of each feature plane
    plane_channels: int
    render_res: int  # side of the volume-rendered feature image
    samples: int  # samples per ray
    hidden: int  # decoder MLP width
    feat: int  # channels of the rendered feature image
    max_side: int  # largest output side


PROFILES = {
    "tiny": Profile(z_dim=32, w_dim=32, plane_res=16, plane_channels=8, render_res=16, samples=8,
                    hidden=16, feat=8, max_side=256),
    "default": Profile(z_dim=64, w_dim=64, plane_res=32, plane_channels=16, render_res=32,
                       samples=16, hidden=32, feat=16, max_side=1024),
    "large": Profile(z_dim=256, w_dim=256, plane_res=128, plane_channels=32, render_res=64,
                     samples=48, hidden=64, feat=32, max_side=1024),
}


class Mapping(nn.Module):
    """z -> w, with the mean w kept for truncation."""

    def __init__(self, z_dim: int, w_dim: int, layers: int = 4) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[m for a, b in zip(dims, dims[1:], strict=False)
                                   for m in (nn.Linear(a, b), nn.LeakyReLU(0.2))])
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        w = self.net(z)
        w = w * torch.rsqrt(w.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.w_avg + truncation[:, None] * (w - self.w_avg)


class ModConv(nn.Module):
    """3x3 convolution whose input channels are scaled by a style from w."""

    def __init__(self, cin: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.style = nn.Linear(w_dim, cin)
        nn.init.normal_(self.style.weight, std=4.0 / w_dim**0.5)  # styles of order one
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = 1.0 + self.style(w)[:, :, None, None]
        return F.leaky_relu(self.conv(x * s), 0.2)


class TriplaneSynthesis(nn.Module):
    """w -> three axis-aligned feature planes (xy, xz, yz)."""

    def __init__(self, p: Profile) -> None:
        super().__init__()
        self.p = p
        self.base = 4
        self.const = nn.Parameter(torch.randn(p.plane_channels * 2, self.base, self.base))
        blocks = []
        res = self.base
        while res < p.plane_res:
            blocks.append(ModConv(p.plane_channels * 2, p.plane_channels * 2, p.w_dim))
            res *= 2
        self.blocks = nn.ModuleList(blocks)
        self.out = ModConv(p.plane_channels * 2, 3 * p.plane_channels, p.w_dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = self.const.expand(w.shape[0], -1, -1, -1)
        for block in self.blocks:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(x, w)
        planes = self.out(x, w)
        # per-sample, per-channel normalization: keeps the planes' structure at unit scale
        planes = (planes - planes.mean(dim=(2, 3), keepdim=True)) * torch.rsqrt(
            planes.var(dim=(2, 3), keepdim=True) + 1e-6)
        return planes.view(w.shape[0], 3, self.p.plane_channels, self.p.plane_res, self.p.plane_res)


def camera_rays(yaw_deg: torch.Tensor, pitch_deg: torch.Tensor, radius: float, fov_deg: float,
                res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions (B, res*res, 3) for cameras orbiting the origin."""
    yaw = torch.deg2rad(yaw_deg)
    pitch = torch.deg2rad(pitch_deg)
    origin = torch.stack([radius * torch.cos(pitch) * torch.sin(yaw), radius * torch.sin(pitch),
                          radius * torch.cos(pitch) * torch.cos(yaw)], dim=-1)  # (B, 3)
    forward = -origin / origin.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward)
    half = math.tan(math.radians(fov_deg) / 2)
    lin = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1
    v, u = torch.meshgrid(-lin * half, lin * half, indexing="ij")
    dirs = (forward[:, None, None, :] + u[None, :, :, None] * right[:, None, None, :]
            + v[None, :, :, None] * true_up[:, None, None, :])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return origin[:, None, :].expand(-1, res * res, -1), dirs.reshape(-1, res * res, 3)


class TriplaneGenerator(nn.Module):
    """The whole generator: seed latents and cameras in, RGB images in [-1, 1] out."""

    def __init__(self, profile: str = "default") -> None:
        super().__init__()
        self.profile_name = profile
        p = self.p = PROFILES[profile]
        self.mapping = Mapping(p.z_dim, p.w_dim)
        self.synthesis = TriplaneSynthesis(p)
        self.decoder = nn.Sequential(nn.Linear(p.plane_channels, p.hidden), nn.Softplus(),
                                     nn.Linear(p.hidden, 1 + p.feat))
        self.superres = nn.ModuleList([nn.Conv2d(p.feat, p.feat, 3, padding=1),
                                       nn.Conv2d(p.feat, 3, 3, padding=1)])
        self.radius, self.fov, self.near, self.far = 2.7, 36.0, 1.9, 3.5

    def latents(self, seeds: list[int]) -> torch.Tensor:
        """One z per seed, each from its own generator: batching never changes a job's latent."""
        return torch.stack([torch.randn(self.p.z_dim, generator=torch.Generator().manual_seed(s))
                            for s in seeds])

    @torch.no_grad()
    def estimate_w_avg(self, samples: int = 2048) -> None:
        z = torch.randn(samples, self.p.z_dim, generator=torch.Generator().manual_seed(0))
        self.mapping.w_avg.zero_()
        self.mapping.w_avg.copy_(self.mapping(z, torch.ones(samples)).mean(dim=0))

    def render(self, w: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        """Volume-render the triplanes of ``w`` from the given cameras: (B, feat, R, R)."""
        p, b = self.p, w.shape[0]
        planes = self.synthesis(w)  # (B, 3, C, P, P)
        origins, dirs = camera_rays(yaw, pitch, self.radius, self.fov, p.render_res)
        t = torch.linspace(self.near, self.far, p.samples)
        pts = origins[:, :, None, :] + dirs[:, :, None, :] * t[None, None, :, None]  # (B,N,S,3)
        n = pts.shape[1] * pts.shape[2]
        flat = pts.reshape(b, 1, n, 3)
        feats = 0
        for i, (a, c) in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = torch.stack([flat[..., a], flat[..., c]], dim=-1)  # (B, 1, n, 2)
            feats = feats + F.grid_sample(planes[:, i], grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
        feats = feats.reshape(b, p.plane_channels, -1, p.samples).permute(0, 2, 3, 1)
        out = self.decoder(feats)  # (B, N, S, 1+feat)
        # a soft sphere prior keeps an object near the origin that w then shapes and paints
        radius = pts.norm(dim=-1)  # (B, N, S)
        sigma = F.softplus(4.0 * torch.tanh(out[..., 0]) + 14.0 * (0.55 - radius))
        color = torch.sigmoid(3.0 * out[..., 1:]) * 2 - 1
        delta = (self.far - self.near) / p.samples
        alpha = 1 - torch.exp(-sigma * delta * 4.0)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]
                                         + 1e-10], dim=-1), dim=-1)
        weights = alpha * trans
        background = 0.85 * (1 - weights.sum(dim=2, keepdim=True))  # a light backdrop
        image = (weights[..., None] * color).sum(dim=2) + background
        return image.permute(0, 2, 1).reshape(b, p.feat, p.render_res, p.render_res)

    def forward(self, z: torch.Tensor, truncation: torch.Tensor, yaw: torch.Tensor,
                pitch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        w = self.mapping(z, truncation)
        feat = self.render(w, yaw, pitch)
        x = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.superres[0](x), 0.2) * 0.1 + x
        return torch.tanh(0.2 * self.superres[1](x) + 1.2 * x[:, :3])


def reference_generator(profile: str = "default") -> TriplaneGenerator:
    """The generator with deterministic seeded reference weights (untrained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REFERENCE_SEED)
        model = TriplaneGenerator(profile)
    model.estimate_w_avg()
    return model.eval()


def weights_sha256(model: nn.Module) -> str:
    """A digest of the weights, stable across runs (tensor names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()
