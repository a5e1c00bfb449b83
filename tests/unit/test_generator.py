"""The generator and its pipelines on the CPU: determinism across batch sizes, checkpoints,
the 3D re-render, the pipeline contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.errors import PipelineError
from jobs.registry import ModelEntry
from jobs.settings import Settings
from storage.provenance import read_png_provenance
from tests.families import context, family, run
from workers.families.aether import AetherFamily
from workers.families.aether.network import Camera, reference_generator, weights_sha256
from workers.families.aether.weights import _cache, export_checkpoint, load_model
from workers.family import Family

AETHER = ModelEntry("aether", "aether")


def params(seed: int, size: int = 64, **kw: Any) -> dict[str, Any]:
    return {"seed": seed, "width": size, "height": size, "truncation": 0.7, "yaw": 0.0,
            "pitch": 0.0, "radius": 2.7, "fov": 36.0, "save_latent": False, "model": "aether", **kw}


def pipeline(kind: str, profile: str = "tiny", **settings: Any) -> AetherFamily:
    fam = family(profile, **settings)
    assert isinstance(fam, AetherFamily)
    return fam


def test_reference_weights_are_deterministic() -> None:
    assert weights_sha256(reference_generator("tiny")) == weights_sha256(reference_generator("tiny"))
    assert weights_sha256(reference_generator("tiny")) != weights_sha256(reference_generator("default"))


@pytest.mark.parametrize("profile", ["tiny", "default"])
def test_same_seed_same_bytes_at_batch_1_and_16(profile: str) -> None:
    pipe = family(profile)
    jobs = [params(seed, 128, yaw=float(seed * 7 % 90)) for seed in range(100, 116)]
    together = [r[0].encode() for r in run(pipe, "generate", jobs)]  # type: ignore[index]
    for i in (0, 5, 15):
        alone = pipe.run([context("generate", jobs[i], i)])[0][0].encode()  # type: ignore[index]
        assert alone == together[i]
    assert len(set(together)) == 16


def test_png_outputs_carry_provenance_and_latents() -> None:
    pipe = pipeline("generate")
    results: Any = run(pipe, "generate", [params(5, save_latent=True), params(6)])
    assert [len(r) for r in results] == [2, 1]
    prov = read_png_provenance(results[0][0].encode())
    assert prov["seed"] == 5 and prov["params"]["seed"] == 5 and prov["job_id"] == "j0"
    assert prov["weights_sha256"] == pipe.provenance()["weights_sha256"]
    assert prov["weights"].startswith("genfarm reference, trained on procedural scenes (tiny.")
    seeded: Any = run(pipeline("generate", checkpoint="seeded"), "generate", [params(5)])
    assert read_png_provenance(seeded[0][0].encode())["weights"] == "seeded reference (untrained)"
    import io

    latent = np.load(io.BytesIO(results[0][1].encode()))
    assert latent.shape == (32,) and results[0][1].name == "latent.npy"


def test_export_and_reload_give_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "aether-tiny.safetensors"
    digest = export_checkpoint(AETHER, "tiny", path, Settings(data_dir=tmp_path))
    reference = pipeline("generate")
    loaded = pipeline("generate", checkpoint=str(path), checkpoint_sha256=digest)
    job = [params(42)]
    first: Any = run(reference, "generate", job)
    assert first[0][0].encode() != b""
    a = read_png_provenance(first[0][0].encode())
    b = read_png_provenance(run(loaded, "generate", job)[0][0].encode())  # type: ignore[index]
    assert a["weights_sha256"] == b["weights_sha256"] and b["weights"].startswith("checkpoint")
    pixels = lambda pipe: pipe.images(job).numpy().tobytes()  # noqa: E731
    assert pixels(reference) == pixels(loaded)
    with pytest.raises(PipelineError, match="sha256"):
        pipeline("generate", checkpoint=str(path), checkpoint_sha256="0" * 64)


def test_rerender_changes_the_view_and_keeps_the_object() -> None:
    gen, edit = pipeline("generate", "default"), pipeline("edit", "default")
    background = np.array([236, 236, 236])

    def foreground_hist(img: np.ndarray) -> np.ndarray:
        px = img[np.abs(img - background).sum(-1) > 30]
        h, _ = np.histogramdd(px, bins=(4, 4, 4), range=[(0, 256)] * 3)
        return h / max(1, h.sum())

    view, other = [], []
    for seed in range(1, 6):
        front = gen.images([params(seed, 128)])[0].numpy().astype(float)
        turned = edit.images([params(seed, 128)], cameras=[params(seed, 128, yaw=40.0)])[0]
        turned = turned.numpy().astype(float)
        rerendered: Any = run(edit, "edit", [{
            "op": "rerender", "source": {"params": params(seed, 128)}, "yaw": 40.0, "pitch": 0.0,
            "radius": 2.7, "fov": 36.0, "width": 128, "height": 128, "model": "aether"}])
        assert rerendered[0][0].encode()[:4] == b"\x89PNG"
        stranger = gen.images([params(seed + 100, 128)])[0].numpy().astype(float)
        assert np.abs(front - turned).mean() > 0.3  # the view changed
        view.append((np.abs(front - turned).mean(),
                     np.abs(foreground_hist(front) - foreground_hist(turned)).sum()))
        other.append((np.abs(front - stranger).mean(),
                      np.abs(foreground_hist(front) - foreground_hist(stranger)).sum()))
    _, view_hist = np.mean(view, axis=0)
    _, other_hist = np.mean(other, axis=0)
    # the turned object keeps its colours; another seed is another object, other colours
    assert view_hist < 0.5 * other_hist, (view_hist, other_hist)


def test_latent_edits_and_style_mixing_change_the_image() -> None:
    gen, edit = pipeline("generate"), pipeline("edit")
    src = params(9)
    base = gen.images([src])[0]
    common = {"source": {"params": src}, "width": 64, "height": 64, "model": "aether"}
    for job in ({"op": "latent", "direction": 0, "strength": 6.0, **common},
                {"op": "style_mix", "mix_seed": 1234, "layers": "coarse", **common},
                {"op": "style_mix", "mix_seed": 1234, "layers": "fine", **common}):
        out = edit._latent_ops(job["op"], [job])[0]  # noqa: SLF001
        assert out.shape == base.shape and not torch.equal(out, base), job["op"]
    zero = {"op": "latent", "direction": 0, "strength": 0.0, **common}
    assert torch.equal(edit._latent_ops("latent", [zero])[0], base)  # noqa: SLF001
    model = load_model(AETHER, Settings(model_profile="tiny"), "cpu").module
    d = model.directions.float()
    assert torch.allclose(d @ d.T, torch.eye(d.shape[0]), atol=1e-4)  # orthonormal directions
    _cache.clear()  # load the shipped checkpoint afresh: the same directions
    again = load_model(AETHER, Settings(model_profile="tiny"), "cpu").module
    assert torch.equal(d, again.directions.float())  # deterministic per model


def test_image_ops_run_batched_and_keep_sizes() -> None:
    edit = pipeline("edit")
    src = {"params": params(3)}
    jobs = [{"op": "image", "source": src, "ops": ops, "model": "aether"} for ops in (
        [{"brightness": 0.2}, {"contrast": 1.5}],
        [{"brightness": -0.2}, {"contrast": 0.5}],
        [{"resize": [32, 48]}, {"flip": "horizontal"}],
        [{"crop": [8, 8, 40, 24]}, {"color_transfer": {"params": params(50)}}],
    )]
    out = edit._image_ops(jobs, [context("edit", j, i) for i, j in enumerate(jobs)])  # noqa: SLF001
    assert [tuple(o.shape) for o in out] == [(64, 64, 3), (64, 64, 3), (48, 32, 3), (24, 40, 3)]
    assert out[0].float().mean() > out[1].float().mean()
    bad = [{"op": "image", "source": src, "ops": [{"crop": [60, 60, 40, 40]}], "model": "aether"}]
    with pytest.raises(PipelineError, match="outside"):
        edit._image_ops(bad, [context("edit", bad[0])])  # noqa: SLF001


def test_cameras_take_radius_and_fov_per_sample() -> None:
    model = reference_generator("tiny")
    ws = model.broadcast(model.w_of([1, 1], torch.full((2,), 0.7)))
    cams = Camera.of([{"radius": 2.7, "fov": 36}, {"radius": 4.0, "fov": 36}])
    with torch.no_grad():
        near, far = model.synthesize(ws, cams, (32, 32))
    def coverage(x: torch.Tensor) -> float:
        background = x[:, :2, :2].mean(dim=(1, 2))[:, None, None]  # a corner is backdrop
        return float(((x - background).abs().sum(0) > 0.15).float().mean())
    assert coverage(far) < coverage(near)  # further away, smaller on screen


def test_family_contract_is_checked() -> None:
    class Broken(Family):
        def _run(self, batch):  # type: ignore[no-untyped-def]
            return []

    fam = Broken(AETHER, Settings())
    with pytest.raises(PipelineError, match="before setup"):
        fam.run([context("generate", {})])
    fam.setup("cpu", torch.float32)
    with pytest.raises(PipelineError, match="exactly one result per job"):
        fam.run([context("generate", {}, 0), context("generate", {}, 1)])


def test_compiled_synthesis_makes_the_images_of_eager(tmp_path: Path) -> None:
    """The ``compile`` option of a models file: torch.compile of the synthesis, the same images
    as eager (float32 on the CPU: within a grey level), and the model is still the same one."""
    models = tmp_path / "models.toml"
    models.write_text('[models.fast]\nfamily = "aether"\n'
                      'options = { profile = "tiny", compile = true, autocast = "off" }\n')
    eager = family("tiny", exact_cpu=False)
    compiled = family("tiny", model="fast", exact_cpu=False, models_file=models)
    assert isinstance(compiled, AetherFamily) and compiled.synthesize is not \
        compiled.model_module.synthesize
    jobs = [params(seed, 64, yaw=float(seed * 11)) for seed in range(4)]
    got = [pipe.images(jobs).int() for pipe in (eager, compiled)]
    assert (got[0] - got[1]).abs().max() <= 1 and got[0].float().std() > 5
    assert compiled.provenance()["weights_sha256"] == eager.provenance()["weights_sha256"]
