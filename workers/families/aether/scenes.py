"""Procedural 3D scenes for training the reference weights: each latent z maps through fixed
smooth functions to one primitive shape (a soft blend of sphere, box, torus, cylinder and cone),
its size, its turn about the vertical axis, colour and material, plus a small satellite sphere
of a second colour; an analytic renderer sphere-traces their signed distance functions with
shading.

The renderer uses the generator's own cameras (``network.camera_rays``), so a target and the
generator's image of the same scene and camera are the same picture when training succeeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workers.families.aether.network import Camera, camera_rays

SHAPES = ("sphere", "box", "torus", "cylinder", "cone")
BACKGROUND = 0.85  # in [-1, 1]: the generator's light backdrop
LIGHT = (0.45, 0.8, 0.55)  # a key light fixed in world space (3D-consistent shading)
BOUND = 0.95  # every scene fits in this sphere


@dataclass(frozen=True)
class Scene:
    """Batched scene parameters, one row per sample."""

    shape: torch.Tensor  # (B, 5) blend weights over SHAPES, summing to 1
    size: torch.Tensor  # (B,)
    rotation: torch.Tensor  # (B, 3, 3) world -> object
    color: torch.Tensor  # (B, 3) in [0, 1]
    specular: torch.Tensor  # (B,)
    moon: torch.Tensor  # (B, 3) satellite centre
    moon_radius: torch.Tensor  # (B,) 0 when absent
    moon_color: torch.Tensor  # (B, 3)


def hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB, smooth in h (hue wraps at 1)."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device) + h[:, None] * 6) % 6
    f = (torch.minimum(k, 4 - k)).clamp(0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) Euler angles (x, y, z) -> (B, 3, 3) rotation matrices."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def scene_of(z: torch.Tensor, truncation: torch.Tensor | None = None) -> Scene:
    """The scene of latents ``z`` (B, z_dim >= 20): z is normalized as the mapping network does,
    then pulled toward 0 (the mean scene) by ``truncation``. Coarse components (0..8) are shape,
    size and pose (7: the turn about the vertical axis; 6 and 8 are unused); fine ones (9..)
    colour, material and the satellite."""
    z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
    if truncation is not None:
        z = z * truncation[:, None]
    shape = torch.softmax(2.5 * z[:, 0:5], dim=1)
    size = 0.42 + 0.08 * torch.tanh(z[:, 5])
    # upright objects turned about the vertical axis: tilts about the other axes cost the
    # generator 1.4 dB (2,400 steps: 20.0 dB with them, 21.4 without), its axis-aligned planes
    # fit a tilted box poorly
    zero = torch.zeros_like(z[:, 7])
    rot = rotation(torch.stack([zero, 0.9 * z[:, 7], zero], dim=1))
    hue = torch.atan2(z[:, 10], z[:, 9]) / (2 * math.pi) % 1.0
    sat = 0.55 + 0.4 * torch.sigmoid(1.5 * z[:, 11])
    color = hsv(hue, sat, torch.full_like(hue, 0.92))
    specular = 0.3 * torch.sigmoid(2.0 * z[:, 12])
    direction = z[:, 13:16] / (z[:, 13:16].norm(dim=1, keepdim=True) + 1e-3)
    moon_radius = 0.16 * torch.sigmoid(3.0 * (z[:, 16] - 0.6))
    moon = direction * 0.62
    moon_color = hsv((hue + 0.5) % 1.0, sat, torch.full_like(hue, 0.92))
    return Scene(shape, size, rot, color, specular, moon, moon_radius, moon_color)


def _cone(p: torch.Tensor, h: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Capped cone along y (half height h, radii r1 at the bottom, r2 at the top): exact SDF."""
    qx = p[..., [0, 2]].norm(dim=-1)
    qy = p[..., 1]
    k1x, k1y = r2, h
    k2x, k2y = r2 - r1, 2 * h
    cax = qx - torch.minimum(qx, torch.where(qy < 0, r1, r2))
    cay = qy.abs() - h
    t = ((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x * k2x + k2y * k2y)
    t = t.clamp(0, 1)
    cbx = qx - k1x + k2x * t
    cby = qy - k1y + k2y * t
    sign = torch.where((cbx < 0) & (cay < 0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(cax * cax + cay * cay, cbx * cbx + cby * cby))


def _primitives(p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Signed distances (..., 5) of the five primitives of scale ``s`` at object-space ``p``."""
    sphere = p.norm(dim=-1) - s
    q = p.abs() - 0.72 * s[..., None]
    box = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0) - 0.04
    ring = torch.stack([p[..., [0, 2]].norm(dim=-1) - 0.75 * s, p[..., 1]], -1)
    torus = ring.norm(dim=-1) - 0.3 * s
    d = torch.stack([p[..., [0, 2]].norm(dim=-1) - 0.62 * s, p[..., 1].abs() - 0.8 * s], -1)
    cylinder = d.clamp(min=0).norm(dim=-1) + d.max(dim=-1).values.clamp(max=0)
    cone = _cone(p, 0.8 * s, 0.85 * s, 0.08 * s)
    return torch.stack([sphere, box, torus, cylinder, cone], -1)


def _sdf(scene: Scene, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (B, N) of the scene at world points ``x`` (B, N, 3), and the main body's share
    of the colour there (1 = body, 0 = satellite)."""
    p = torch.einsum("bij,bnj->bni", scene.rotation, x)
    body = (_primitives(p, scene.size[:, None]) * scene.shape[:, None, :]).sum(-1)
    moon = (x - scene.moon[:, None, :]).norm(dim=-1) - scene.moon_radius[:, None]
    k = 0.06  # smooth union: the satellite merges softly into the body
    h = (0.5 + 0.5 * (moon - body) / k).clamp(0, 1)
    dist = moon + (body - moon) * h - k * h * (1 - h)
    return dist, h


def _take(scene: Scene, rows: torch.Tensor) -> Scene:
    """The scenes of ``rows`` (one per ray): lets rays of many scenes march as one flat list."""
    return Scene(**{f: getattr(scene, f)[rows] for f in Scene.__dataclass_fields__})


def render_sdf(scene: Scene, cam: Camera, res: int, steps: int = 48,
               supersample: int = 2) -> torch.Tensor:
    """Images (B, 3, res, res) in [-1, 1] of ``scene`` from ``cam``: sphere tracing, Lambert and
    Blinn-Phong shading with a world-fixed light, antialiased by supersampling.

    Only rays that meet the bounding sphere march, as one flat list; a ray stops once it has
    left the sphere (nothing lies beyond) or reached the surface, so most of the work goes to
    the few rays still searching."""
    b, hi = scene.size.shape[0], res * supersample
    origins, dirs = camera_rays(cam, hi)
    origins, dirs = origins.to(scene.size.dtype), dirs.to(scene.size.dtype)
    # start at the bounding sphere: |o + t d| = BOUND
    od = (origins * dirs).sum(-1)
    disc = od * od - (origins.square().sum(-1) - BOUND**2)
    batch, ray = (disc > 0).nonzero(as_tuple=True)
    o, d = origins[batch, ray][:, None, :], dirs[batch, ray][:, None, :]  # (M, 1, 3)
    root = disc[batch, ray].sqrt()
    t = (-od[batch, ray] - root).clamp(min=0)[:, None]  # (M, 1)
    far = (-od[batch, ray] + root)[:, None]
    ray_scene = _take(scene, batch)
    live = torch.arange(batch.shape[0])
    lo, ld, lt, lfar, lscene = o, d, t.clone(), far, ray_scene  # the rays still marching
    for i in range(steps):
        dist, _ = _sdf(lscene, lo + ld * lt[..., None])
        lt = lt + 0.9 * dist.clamp(min=-0.02)
        if i % 4 == 3 or i == steps - 1:  # retire rays that left the sphere or sit on the surface
            t[live] = lt
            keep = ((lt < lfar) & (dist.abs() > 1e-5))[:, 0]
            if not bool(keep.all()):
                live, lo, ld, lt, lfar = live[keep], lo[keep], ld[keep], lt[keep], lfar[keep]
                lscene = _take(lscene, keep)
            if live.numel() == 0:
                break
    x = o + d * t[..., None]
    dist, _ = _sdf(ray_scene, x)
    hit = ((dist.abs() < 4e-3) & (t < far))[:, 0]
    rows, x, d, ray_scene = batch[hit], x[hit], d[hit], _take(ray_scene, hit.nonzero()[:, 0])
    _, mix = _sdf(ray_scene, x)
    eps = 1e-3
    offsets = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=x.dtype) * eps
    normal = sum(off * _sdf(ray_scene, x + off)[0][..., None] for off in offsets)
    normal = normal / (normal.norm(dim=-1, keepdim=True) + 1e-9)
    light = torch.tensor(LIGHT, dtype=x.dtype)
    light = light / light.norm()
    diffuse = (normal * light).sum(-1).clamp(min=0)
    fill = 0.5 + 0.5 * normal[..., 1]  # sky light from above, so shadowed sides keep some form
    half = light - d
    half = half / half.norm(dim=-1, keepdim=True)
    spec = (normal * half).sum(-1).clamp(min=0) ** 24
    color = (mix[..., None] * ray_scene.color[:, None, :]
             + (1 - mix[..., None]) * ray_scene.moon_color[:, None, :])
    shade = 0.22 + 0.18 * fill + 0.7 * diffuse
    lit = color * shade[..., None] + ray_scene.specular[:, None, None] * spec[..., None]
    rgb = torch.full((b, hi * hi, 3), BACKGROUND, dtype=x.dtype)
    rgb[rows, ray[hit]] = lit[:, 0].clamp(0, 1) * 2 - 1
    image = rgb.permute(0, 2, 1).reshape(b, 3, hi, hi)
    return torch.nn.functional.avg_pool2d(image, supersample) if supersample > 1 else image


def random_cameras(n: int, gen: torch.Generator) -> Camera:
    """Cameras from the ranges jobs use most: any yaw, pitch -30..50, radius 2.2..3.8,
    fov 22..45 degrees."""
    u = torch.rand(n, 4, generator=gen)
    return Camera(yaw=u[:, 0] * 360 - 180, pitch=u[:, 1] * 80 - 30, radius=2.2 + 1.6 * u[:, 2],
                  fov=22 + 23 * u[:, 3])
