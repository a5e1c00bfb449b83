"""The diffusers family, end to end on a tiny random Stable Diffusion pipeline: built in code
(tokenizer from a vocabulary written here), saved with save_pretrained, declared in a models file
and loaded through the same code a studio's real model folder goes through."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("diffusers", reason="the diffusers family needs genfarm[diffusers]")
pytest.importorskip("transformers", reason="the diffusers family needs genfarm[diffusers]")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from jobs.catalog import ModelsFileError, check_model, load_catalog  # noqa: E402
from jobs.catalog import weights_digest as folder_digest  # noqa: E402
from jobs.errors import PipelineError  # noqa: E402
from jobs.families.diffusers import SPEC, WeightsError, batch_key  # noqa: E402
from jobs.registry import ModelEntry, Registry, registry  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from storage import open_storage  # noqa: E402
from storage.base import Storage  # noqa: E402
from storage.provenance import read_png_provenance  # noqa: E402
from workers.family import Family, JobContext, PermanentError, Result, Retry  # noqa: E402
from workers.runner import default_dtype  # noqa: E402

PROJECT = "p"
STEPS = 3
pytestmark = pytest.mark.filterwarnings(  # diffusers schedulers under numpy 2 and torch 2.13
    "ignore:__array__ implementation:DeprecationWarning")


# -- a tiny Stable Diffusion, saved the way a studio's folder is ----------------------------------
def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A CLIP BPE vocabulary of single letters: enough to tokenize lowercase prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    tokens = ["<|startoftext|>", "<|endoftext|>", "<unk>"] + list(letters)
    tokens += [c + "</w>" for c in letters]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return vocab, merges


def build_tiny_sd(folder: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = write_tokenizer_files(folder.parent / "tokenizer-source")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    # four VAE blocks: latents are 1/8 of the image side, as in a real Stable Diffusion
    vae = AutoencoderKL(block_out_channels=[32, 32, 32, 32], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, layer_norm_eps=1e-5))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe: Any = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "sd-tiny"
    build_tiny_sd(folder)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    return open_storage(tmp_path_factory.mktemp("bucket").as_uri())


def diffusers_registry() -> Registry:
    """The installed registry plus this family, as its entry point will register it."""
    reg = registry()
    return Registry(reg.kinds, {**reg.families, SPEC.name: SPEC})


def models_file(tmp: Path, weights: Path, extra: str = "") -> Settings:
    path = tmp / "models.toml"
    path.write_text(f'[models.sd-tiny]\nfamily = "diffusers"\nweights = "{weights}"\n{extra}')
    return Settings(models_file=path)


def load(entry: ModelEntry, settings: Settings | None = None) -> Family:
    """A family set up as a worker process sets one up: its worker class from the spec, the
    runner's dtype for the device."""
    cfg = settings or Settings()
    fam: Family = SPEC.load_worker()(entry, cfg)
    fam.setup("cpu", default_dtype(cfg, "cpu"))
    return fam


def entry(weights: Path | str, sha256: str | None = None, **options: Any) -> ModelEntry:
    return ModelEntry("sd-tiny", "diffusers", str(weights), sha256, options)


def ctx(store: Storage, kind: str, params: dict[str, Any], i: int = 0,
        progress: Callable[[float], bool] = lambda done: True) -> JobContext:
    return JobContext(f"j{i}", "b1", PROJECT, 1, kind, params, store, _progress=progress)


def gen(seed: int, prompt: str = "a red barn", **over: Any) -> dict[str, Any]:
    return {"model": "sd-tiny", "prompt": prompt, "seed": seed, "steps": STEPS,
            "guidance": 5.0, "width": 64, "height": 80, **over}


def run(fam: Family, store: Storage, kind: str, jobs: list[dict[str, Any]]) -> list[Result]:
    return fam.run([ctx(store, kind, job, i) for i, job in enumerate(jobs)])


def png_bytes(result: Result) -> bytes:
    assert isinstance(result, list) and len(result) == 1, result
    art = result[0]
    assert art.name == "image.png" and art.content_type == "image/png"
    return art.encode()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def upload(store: Storage, name: str, image: Image.Image | bytes) -> dict[str, str]:
    """An object under the project's uploads, as a resolved reference."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    stored = store.put(f"{PROJECT}/uploads/{name}", image, "image/png")
    return {"key": stored.key, "sha256": stored.sha256}


@pytest.fixture(scope="module")
def family(sd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """The model declared in a models file, loaded as the runner loads it."""
    settings = models_file(tmp_path_factory.mktemp("conf"), sd_folder,
                           'options = { scheduler = "ddim" }\n')
    catalog = load_catalog(settings, diffusers_registry())
    fam: Family = catalog.family("sd-tiny").load_worker()(catalog.models["sd-tiny"], settings)
    fam.setup("cpu", default_dtype(settings, "cpu"))
    return fam


# -- generate ---------------------------------------------------------------------------------
def test_generate_runs_a_batch_of_prompts_with_provenance(family: Family, store: Storage,
                                                          sd_folder: Path) -> None:
    jobs = [gen(1, "a red barn"), gen(2, "blue sky"), gen(3, "a red barn", negative_prompt="fog")]
    results = run(family, store, "generate", jobs)
    assert len(results) == 3
    images = [png_bytes(r) for r in results]
    assert len(set(images)) == 3  # different seeds (and prompts), different images
    digest = folder_digest(sd_folder)
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (64, 80) and im.mode == "RGB"
        prov = read_png_provenance(data)
        assert prov["model"] == "sd-tiny" and prov["family"] == "diffusers"
        assert prov["weights_sha256"] == digest
        assert prov["seed"] == jobs[i]["seed"] and prov["job_id"] == f"j{i}"
        assert prov["batch_id"] == "b1" and prov["params"] == jobs[i]
        assert prov["scheduler"] == "ddim" and prov["sampler"] == "DDIMScheduler"
        assert prov["pipeline"] == "StableDiffusionPipeline" and prov["dtype"] == "float64"
    meta = json.loads(results[0][0].metadata["genfarm-provenance"])  # type: ignore[index]
    assert meta["weights_sha256"] == digest


def test_the_models_file_digest_is_the_workers(family: Family, sd_folder: Path,
                                               tmp_path: Path) -> None:
    settings = models_file(tmp_path, sd_folder)
    check = check_model(load_catalog(settings, diffusers_registry()), "sd-tiny")
    assert check.loadable and check.digest == family.provenance()["weights_sha256"]


def test_same_seed_same_bytes_on_a_rerun(family: Family, store: Storage, sd_folder: Path) -> None:
    job = gen(11, "green hills")
    first = png_bytes(run(family, store, "generate", [job])[0])
    again = png_bytes(run(load(entry(sd_folder, scheduler="ddim")), store, "generate", [job])[0])
    assert again == first


def test_batch_size_and_bytes(family: Family, store: Storage, sd_folder: Path) -> None:
    """float64 (the worker's CPU dtype with exact_cpu): a job's bytes do not depend on the jobs
    beside it. float32: measured, a rounding step of at most 1 in a few pixels."""
    job = gen(5, "a red barn")
    others = [gen(6, "blue sky"), gen(7, "dog"), gen(8, "a tall tree")]
    for fam, exact in ((family, True), (load(entry(sd_folder, dtype="float32")), False)):
        alone = pixels(png_bytes(run(fam, store, "generate", [job])[0]))
        inside = pixels(png_bytes(run(fam, store, "generate", [others[0], job, *others[1:]])[1]))
        diff = np.abs(alone - inside)
        print(f"{fam.provenance()['dtype']}: batch 1 vs 4: max pixel diff {diff.max()}, "
              f"{(diff > 0).mean():.4%} of values differ")
        if exact:
            assert diff.max() == 0
        else:
            assert diff.max() <= 2 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("name", ["ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun",
                                  "dpm", "unipc"])
def test_every_scheduler_runs_and_repeats(family: Family, store: Storage, name: str) -> None:
    job = gen(3, "blue sky", scheduler=name, steps=2, width=64, height=64)
    first, second = (png_bytes(run(family, store, "generate", [job])[0]) for _ in range(2))
    assert first == second  # no state left over from the pass before
    assert read_png_provenance(first)["scheduler"] == name


# -- edits ------------------------------------------------------------------------------------
def test_img2img_and_inpaint_read_their_sources_from_storage(family: Family,
                                                             store: Storage) -> None:
    gradient = np.linspace(0, 255, 96 * 72 * 3).reshape(72, 96, 3).astype(np.uint8)
    source = upload(store, "source.png", Image.fromarray(gradient))
    mask_px = np.zeros((72, 96), np.uint8)
    mask_px[16:48, 24:72] = 255
    mask = upload(store, "mask.png", Image.fromarray(mask_px))
    edit = {"model": "sd-tiny", "prompt": "a red barn", "steps": 4, "guidance": 5.0,
            "strength": 0.5, "source": source}
    i2i = [{**edit, "op": "img2img", "seed": 1}, {**edit, "op": "img2img", "seed": 2}]
    results = run(family, store, "edit", i2i)
    assert len(results) == 2
    for data in map(png_bytes, results):
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (96, 72)  # no size given: the source's
        prov = read_png_provenance(data)
        assert prov["pipeline"] == "StableDiffusionImg2ImgPipeline"
        assert prov["params"]["source"] == source and prov["model"] == "sd-tiny"
    inpaint = [{**edit, "op": "inpaint", "mask": mask, "seed": s, "strength": 1.0,
                "width": 64, "height": 64} for s in (1, 2)]
    results = run(family, store, "edit", inpaint)
    for data in map(png_bytes, results):
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (64, 64)
        assert read_png_provenance(data)["pipeline"] == "StableDiffusionInpaintPipeline"
    pipes = family.pipes  # type: ignore[attr-defined]
    assert pipes["img2img"].unet is pipes["text2img"].unet is pipes["inpaint"].unet


def test_a_source_that_is_not_an_image_fails_only_its_own_job(family: Family,
                                                              store: Storage) -> None:
    good = upload(store, "good.png", Image.new("RGB", (64, 64), (200, 30, 30)))
    bad = upload(store, "bad.png", b"this is not a png")
    edit = {"model": "sd-tiny", "op": "img2img", "prompt": "a red barn", "steps": 2,
            "guidance": 5.0, "strength": 0.5}
    results = run(family, store, "edit", [{**edit, "source": good, "seed": 1},
                                          {**edit, "source": bad, "seed": 2},
                                          {**edit, "source": good, "seed": 3}])
    assert isinstance(results[1], PermanentError) and not isinstance(results[1], Retry)
    assert "bad.png is not a readable image" in str(results[1])
    assert png_bytes(results[0]) != png_bytes(results[2])
    outside = run(family, store, "edit", [{**edit, "seed": 1,
                                           "source": {"key": "other/uploads/good.png"}}])
    assert isinstance(outside[0], PermanentError) and "not inside" in str(outside[0])


def test_sources_of_several_sizes_in_one_pass(family: Family, store: Storage) -> None:
    """No size given, an edit takes its source's: one pipeline call per size in the pass."""
    small = upload(store, "small.png", Image.new("RGB", (64, 64), (0, 90, 200)))
    wide = upload(store, "wide.png", Image.new("RGB", (203, 101), (0, 200, 90)))
    edit = {"model": "sd-tiny", "op": "img2img", "prompt": "sky", "steps": 2, "guidance": 1.0,
            "strength": 0.5, "seed": 4}
    results = run(family, store, "edit", [{**edit, "source": small}, {**edit, "source": wide},
                                          {**edit, "source": wide, "width": 128},
                                          {**edit, "source": wide, "width": 64}])
    sizes = []
    for data in map(png_bytes, results[:3]):
        with Image.open(io.BytesIO(data)) as im:
            sizes.append(im.size)
    assert sizes == [(64, 64), (200, 96), (128, 64)]
    assert isinstance(results[3], PermanentError) and "sides run 64..2048" in str(results[3])


# -- progress and cancellation ------------------------------------------------------------------
def test_progress_is_reported_and_a_pass_nobody_holds_stops(family: Family,
                                                             store: Storage) -> None:
    seen: list[float] = []

    def report(done: float) -> bool:
        seen.append(done)
        return True

    done = family.run([ctx(store, "generate", gen(1, steps=4), progress=report)])
    assert isinstance(done[0], list) and seen == sorted(seen) and 0 < seen[0] < seen[-1] < 1
    gone = family.run([ctx(store, "generate", gen(1, steps=4), i, progress=lambda d: False)
                       for i in range(2)])
    assert all(isinstance(r, Retry) and "no job of this pass is held" in str(r) for r in gone)


# -- loading ----------------------------------------------------------------------------------
def test_a_hugging_face_cache_folder_loads_the_same_weights(sd_folder: Path, store: Storage,
                                                            tmp_path: Path) -> None:
    """models--org--name/{blobs, refs/main, snapshots/REV} with the files as links to blobs."""
    cache = tmp_path / "hub" / "models--studio--sd-tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    for path in sorted(p for p in sd_folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = cache / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = cache / "snapshots" / rev / path.relative_to(sd_folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(rev)
    job = gen(9, "a tall tree")
    cached = load(entry(cache, sha256=folder_digest(sd_folder)))
    plain = load(entry(sd_folder))
    assert cached.provenance()["weights_sha256"] == plain.provenance()["weights_sha256"]
    assert png_bytes(run(cached, store, "generate", [job])[0]) == \
        png_bytes(run(plain, store, "generate", [job])[0])
    by_rev = load(entry(cache, revision=rev))  # a snapshot named in the options
    assert by_rev.provenance()["weights_sha256"] == folder_digest(sd_folder)
    with pytest.raises(WeightsError, match="revision v2 .* is not in the cache"):
        load(entry(cache, revision="v2"))
    (cache / "refs" / "main").unlink()
    (cache / "snapshots" / "fedcba").mkdir()
    with pytest.raises(WeightsError, match="no refs/main and 2 snapshots .* set options.revision"):
        load(entry(cache))
    with pytest.raises(WeightsError, match="a Hugging Face cache root: point weights at its "
                                           "models--org--name folder"):
        load(entry(cache.parent))


def test_each_missing_piece_has_a_clear_error(sd_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(weights: Path | str, *expected: str, sha256: str | None = None,
              **options: Any) -> None:
        with pytest.raises(PipelineError) as info:
            load(entry(weights, sha256, **options))
        assert "model sd-tiny" in str(info.value)
        for text in expected:
            assert text in str(info.value), str(info.value)

    fails(tmp_path / "nowhere", "no such folder", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no model_index.json")
    fails(sd_folder, "not the pinned " + "0" * 64, folder_digest(sd_folder), sha256="0" * 64)
    fails("s3://bucket/sd-tiny", "local folder only")
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "unet")
    fails(broken, "missing component folder(s) unet")
    fails(sd_folder, "missing component folder(s) safety_checker, feature_extractor",
          safety_checker=True)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    fails(sd_folder, "pip install 'genfarm[diffusers]'")


def test_options_are_checked_in_the_models_file(sd_folder: Path, tmp_path: Path) -> None:
    settings = models_file(tmp_path, sd_folder, 'options = { dtype = "float8" }\n')
    with pytest.raises(ModelsFileError, match="model 'sd-tiny': options.dtype"):
        load_catalog(settings, diffusers_registry())
    settings = models_file(tmp_path, sd_folder, 'options = { sampler = "ddim" }\n')
    with pytest.raises(ModelsFileError, match="options.sampler"):
        load_catalog(settings, diffusers_registry())


# -- the torch-free spec ----------------------------------------------------------------------
def validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    schema = SPEC.kinds[kind]
    adapter = schema.adapter() if hasattr(schema, "adapter") else None
    model = adapter.validate_python(params) if adapter else schema.model_validate(params)  # type: ignore[union-attr]
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped


def test_schemas_bound_every_field() -> None:
    ok = validate("generate", {"model": "m", "prompt": "x", "seed": 0})
    assert (ok["width"], ok["height"], ok["steps"]) == (512, 512, 30)
    bad: list[dict[str, Any]] = [
        {"prompt": "x"}, {"prompt": "", "seed": 1}, {"prompt": "x", "seed": 2**32},
        {"prompt": "x", "seed": 1, "width": 100}, {"prompt": "x", "seed": 1, "steps": 151},
        {"prompt": "x", "seed": 1, "guidance": 31}, {"prompt": "x", "seed": 1, "colour": 1},
        {"prompt": "x", "seed": 1, "scheduler": "magic"}, {"prompt": "x" * 2001, "seed": 1}]
    for params in bad:
        with pytest.raises(ValidationError):
            validate("generate", {"model": "m", **params})
    edit = {"model": "m", "prompt": "x", "seed": 1, "source": {"key": "p/uploads/a.png"}}
    assert validate("edit", {**edit, "op": "img2img"})["strength"] == 0.75
    for params in ({**edit, "op": "inpaint"},  # no mask
                   {**edit, "op": "img2img", "steps": 2, "strength": 0.4},  # runs no step
                   {**edit, "op": "img2img", "strength": 0},
                   {**edit, "op": "outpaint"}):
        with pytest.raises(ValidationError):
            validate("edit", params)
    for model in (SPEC.kinds["generate"], *SPEC.kinds["edit"].models.values()):  # type: ignore[union-attr]
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_batch_key_joins_only_jobs_that_can_share_a_call() -> None:
    base = validate("generate", {"model": "m", "prompt": "x", "seed": 1})
    key = batch_key("generate", base)
    assert key == batch_key("generate", {**base, "prompt": "other", "seed": 2,
                                         "negative_prompt": "fog"})
    changes: list[dict[str, Any]] = [{"model": "n"}, {"width": 640}, {"height": 640},
                                     {"steps": 20}, {"guidance": 3.0}, {"scheduler": "euler"}]
    for change in changes:
        assert batch_key("generate", {**base, **change}) != key, change
    edit = validate("edit", {"model": "m", "op": "img2img", "prompt": "x", "seed": 1,
                             "source": {"key": "p/uploads/a.png"}})
    assert batch_key("edit", edit) != batch_key("edit", {**edit, "op": "inpaint"})
    assert batch_key("edit", edit) != batch_key("edit", {**edit, "strength": 0.5})
    assert batch_key("edit", edit) == batch_key("edit", {**edit, "seed": 9,
                                                         "source": {"key": "p/uploads/b.png"}})


def test_the_spec_module_does_not_import_torch() -> None:
    import subprocess

    code = ("import sys, jobs.families.diffusers; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')]; "
            "assert not bad, bad[:5]; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]

