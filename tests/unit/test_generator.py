import pytest
import torch

from jobs.errors import PipelineError
from jobs.settings import Settings
from storage.provenance import read_png_provenance
from workers.models.aether import reference_generator, weights_sha256
from workers.pipelines import make_pipeline
from workers.pipelines.base import Pipeline


def params(seed: int, **kw: object) -> dict:
    return {"seed": seed, "width": 32, "height": 32, "truncation": 0.7, "yaw": 0.0, "pitch": 0.0,
            "model": "aether", **kw}


def ctx(i: int) -> dict:
    return {"job_id": f"j{i}", "batch_id": "b"}


def test_reference_weights_are_deterministic() -> None:
    assert weights_sha256(reference_generator("tiny")) == weights_sha256(reference_generator("tiny"))
    assert weights_sha256(reference_generator("tiny")) != weights_sha256(reference_generator("default"))


def test_generator_is_deterministic_per_seed_and_sensitive_to_seed_and_camera() -> None:
    model = reference_generator("tiny")
    z = model.latents([1, 1, 2, 1])
    with torch.no_grad():
        x = model(z, torch.full((4,), 0.7), torch.tensor([0.0, 0.0, 0.0, 60.0]),
                  torch.zeros(4), (32, 32))
    assert x.shape == (4, 3, 32, 32) and x.abs().max() <= 1
    assert torch.equal(x[0], x[1])
    assert (x[0] - x[2]).abs().mean() > 1e-3  # another seed, another object
    assert (x[0] - x[3]).abs().mean() > 1e-3  # another camera, another view


def test_generate_pipeline_png_outputs_with_provenance() -> None:
    pipe = make_pipeline("generate", Settings(model_profile="tiny"))
    pipe.setup("cpu")
    results = pipe.run([params(5), params(6)], [ctx(0), ctx(1)])
    assert [len(r) for r in results] == [1, 1]
    png = results[0][0].encode()
    prov = read_png_provenance(png)
    assert prov["seed"] == 5 and prov["params"]["seed"] == 5 and prov["job_id"] == "j0"
    assert prov["weights_sha256"] == pipe.provenance()["weights_sha256"]
    assert prov["weights"] == "reference (untrained)"
    # same job, same bytes, when run again in a different batch
    again = pipe.run([params(9), params(5)], [ctx(1), ctx(0)])
    assert again[1][0].encode() == png


def test_pipeline_contract_is_checked() -> None:
    class Broken(Pipeline):
        def _run(self, jobs, context):  # type: ignore[no-untyped-def]
            return []

    pipe = Broken()
    with pytest.raises(PipelineError, match="before setup"):
        pipe.run([{}], [{}])
    pipe.setup("cpu")
    with pytest.raises(PipelineError, match="exactly one result per input"):
        pipe.run([{}, {}], [{}, {}])
