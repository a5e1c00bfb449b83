"""A compact 3D-aware triplane generator (mapping z -> w, three feature planes, volume rendering,
super-resolution), in the style of EG3D-like generators.

Deterministic: the same seed, camera and weights give the same image. Weights
come from a safetensors checkpoint (by default the reference one trained on procedural scenes,
``train.py``) or from a fixed seed ("seeded reference weights", untrained).
"""

from __future__ import annotations

import hashlib
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

    w_avg: torch.Tensor

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

    @property
    def num_layers(self) -> int:
        """Style inputs: one per block plus the output layer (coarse first, fine last)."""
        return len(self.blocks) + 1

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        """``ws``: (B, num_layers, w_dim), one style per layer (all equal without mixing)."""
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, block in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(x, ws[:, i])
        planes = self.out(x, ws[:, -1])
        # per-sample, per-channel normalization: keeps the planes' structure at unit scale
        planes = (planes - planes.mean(dim=(2, 3), keepdim=True)) * torch.rsqrt(
            planes.var(dim=(2, 3), keepdim=True) + 1e-6)
        return planes.view(ws.shape[0], 3, self.p.plane_channels, self.p.plane_res, self.p.plane_res)


@dataclass(frozen=True)
class Camera:
    """Per-sample cameras orbiting the origin: degrees, and a distance in object units."""

    yaw: torch.Tensor
    pitch: torch.Tensor
    radius: torch.Tensor
    fov: torch.Tensor

    @staticmethod
    def of(params: list[dict], device: str | torch.device = "cpu",
           dtype: torch.dtype = torch.float32) -> Camera:
        def col(name: str, default: float) -> torch.Tensor:
            return torch.tensor([float(p.get(name, default)) for p in params], device=device,
                                dtype=dtype)

        return Camera(col("yaw", 0.0), col("pitch", 0.0), col("radius", 2.7), col("fov", 30.0))


def camera_rays(cam: Camera, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions (B, res*res, 3) for cameras orbiting the origin."""
    yaw = torch.deg2rad(cam.yaw)
    pitch = torch.deg2rad(cam.pitch)
    radius = cam.radius
    origin = torch.stack([radius * torch.cos(pitch) * torch.sin(yaw), radius * torch.sin(pitch),
                          radius * torch.cos(pitch) * torch.cos(yaw)], dim=-1)  # (B, 3)
    forward = -origin / origin.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], device=forward.device, dtype=forward.dtype).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward)
    half = torch.tan(torch.deg2rad(cam.fov) / 2)[:, None, None, None]  # (B, 1, 1, 1)
    lin = (torch.arange(res, dtype=radius.dtype, device=radius.device) + 0.5) / res * 2 - 1
    v, u = torch.meshgrid(-lin, lin, indexing="ij")
    dirs = (forward[:, None, None, :] + half * u[None, :, :, None] * right[:, None, None, :]
            + half * v[None, :, :, None] * true_up[:, None, None, :])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return origin[:, None, :].expand(-1, res * res, -1), dirs.reshape(-1, res * res, 3)


class TriplaneGenerator(nn.Module):
    """The whole generator: seed latents and cameras in, RGB images in [-1, 1] out."""

    directions: torch.Tensor

    def __init__(self, profile: str = "default") -> None:
        super().__init__()
        self.profile_name = profile
        p = self.p = PROFILES[profile]
        self.mapping = Mapping(p.z_dim, p.w_dim)
        self.synthesis = TriplaneSynthesis(p)
        self.decoder = nn.Sequential(nn.Linear(p.plane_channels, p.hidden), nn.Softplus(),
                                     nn.Linear(p.hidden, 1 + p.feat))
        self.tint = nn.Linear(p.w_dim, p.feat)  # the object's palette, from the fine style
        nn.init.normal_(self.tint.weight, std=6.0 / p.w_dim**0.5)
        self.superres = nn.ModuleList([nn.Conv2d(p.feat, p.feat, 3, padding=1),
                                       nn.Conv2d(p.feat, 3, 3, padding=1)])
        self.depth = 0.8  # rays sample the object's slab [radius - depth, radius + depth]
        self.register_buffer("directions", torch.zeros(8, p.w_dim))  # principal directions of w

    def latents(self, seeds: list[int]) -> torch.Tensor:
        """One z per seed, each from its own generator: batching never changes a job's latent."""
        return torch.stack([torch.randn(self.p.z_dim, generator=torch.Generator().manual_seed(s))
                            for s in seeds])

    @torch.no_grad()
    def estimate_w_stats(self, samples: int = 2048) -> None:
        """The mean w (for truncation) and the principal directions of w space (for latent
        edits), from a fixed set of samples: deterministic per model."""
        z = torch.randn(samples, self.p.z_dim, generator=torch.Generator().manual_seed(0))
        self.mapping.w_avg.zero_()
        w = self.mapping(z, torch.ones(samples))
        self.mapping.w_avg.copy_(w.mean(dim=0))
        centered = (w - w.mean(dim=0)).double()
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        k = self.directions.shape[0]
        dirs = vh[:k].float()
        # fix each direction's sign, so that the same model always gives the same directions
        signs = torch.sign(dirs[torch.arange(k), dirs.abs().argmax(dim=1)])
        self.directions.copy_(dirs * signs[:, None])

    def w_of(self, seeds: list[int], truncation: torch.Tensor) -> torch.Tensor:
        z = self.latents(seeds).to(truncation.device, truncation.dtype)
        return self.mapping(z, truncation)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """One w per layer: (B, w_dim) -> (B, num_layers, w_dim)."""
        return w[:, None, :].expand(-1, self.synthesis.num_layers, -1)

    def field(self, planes: torch.Tensor, ws: torch.Tensor, pts: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (B, ...) and colour features (B, ..., feat) in [-1, 1] of the triplanes
        ``planes`` (B, 3, C, P, P) at world points ``pts`` (B, ..., 3)."""
        p, b = self.p, pts.shape[0]
        flat = pts.reshape(b, 1, -1, 3)
        feats = torch.zeros(())
        for i, (a, c) in enumerate(((0, 1), (0, 2), (1, 2))):
            grid = torch.stack([flat[..., a], flat[..., c]], dim=-1)  # (B, 1, n, 2)
            feats = feats + F.grid_sample(planes[:, i], grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
        feats = feats.reshape(b, p.plane_channels, -1).transpose(1, 2)  # (B, n, C)
        out = self.decoder(feats).reshape(*pts.shape[:-1], 1 + p.feat)
        # a soft sphere prior keeps an object near the origin that w then shapes and paints; the
        # decoder may carve it anywhere (a torus's hole) or grow it up to the slab's edge
        sigma = F.softplus(5.0 * out[..., 0] + 8.0 * (0.5 - pts.norm(dim=-1)))
        tint = self.tint(3.0 * (ws[:, -1] - self.mapping.w_avg))
        tint = tint.view(b, *([1] * (pts.dim() - 2)), p.feat)
        return sigma, torch.sigmoid(3.0 * out[..., 1:] + tint) * 2 - 1

    def opacity(self, sigma: torch.Tensor) -> torch.Tensor:
        """The opacity of one ray sample of density ``sigma``."""
        return 1 - torch.exp(-sigma * (2 * self.depth / self.p.samples) * 4.0)

    def render(self, ws: torch.Tensor, cam: Camera) -> torch.Tensor:
        """Volume-render the triplanes of ``ws`` from the given cameras: (B, feat, R, R)."""
        p, b = self.p, ws.shape[0]
        planes = self.synthesis(ws)  # (B, 3, C, P, P)
        origins, dirs = camera_rays(cam, p.render_res)
        steps = torch.linspace(-self.depth, self.depth, p.samples, device=ws.device, dtype=ws.dtype)
        t = cam.radius[:, None] + steps[None, :]  # (B, S)
        pts = origins[:, :, None, :] + dirs[:, :, None, :] * t[:, None, :, None]  # (B,N,S,3)
        sigma, color = self.field(planes, ws, pts)
        alpha = self.opacity(sigma)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]
                                         + 1e-10], dim=-1), dim=-1)
        weights = alpha * trans
        background = 0.85 * (1 - weights.sum(dim=2, keepdim=True))  # a light backdrop
        image = (weights[..., None] * color).sum(dim=2) + background
        return image.permute(0, 2, 1).reshape(b, p.feat, p.render_res, p.render_res)

    def synthesize(self, ws: torch.Tensor, cam: Camera, size: tuple[int, int]) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W), from per-layer styles and cameras."""
        feat = self.render(ws, cam)
        x = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.superres[0](x), 0.2) * 0.1 + x
        return torch.tanh(0.2 * self.superres[1](x) + 1.2 * x[:, :3])


def reference_generator(profile: str = "default") -> TriplaneGenerator:
    """The generator with deterministic seeded reference weights (untrained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REFERENCE_SEED)
        model = TriplaneGenerator(profile)
    model.estimate_w_stats()
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
