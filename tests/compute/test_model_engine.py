"""The models engine: predict jobs merged along the batch axis answer exactly what each job alone answers."""

from __future__ import annotations

import pathlib

import numpy as np

from service.compute.models.engine import ModelsEngine, PredictJob, mergeable
from service.compute.models.loading import load_version
from tests import model_repo

RNG = np.random.default_rng(5)
ENGINE = ModelsEngine()


def test_merged_keras_jobs_are_split_back_equal_to_their_own_calls(tmp_path: pathlib.Path) -> None:
    model = model_repo.two_headed()
    served = load_version(model_repo.save_keras(model, tmp_path, "two", 1))
    signature = served.signatures["serving_default"]
    jobs = []
    for size in (1, 3, 2):
        inputs = {
            "a": RNG.normal(size=(size, 2)).astype(np.float32),
            "b": RNG.normal(size=(size, 3)).astype(np.float32),
        }
        jobs.append(PredictJob(served, "serving_default", inputs, mergeable(served, signature, inputs)))
    assert [job.batch for job in jobs] == [1, 3, 2]
    assert len({ENGINE.merge_key(job) for job in jobs}) == 1
    answers = ENGINE.run(jobs)
    for job, answer in zip(jobs, answers, strict=True):
        risk, scores = (value.numpy() for value in model([job.inputs["a"], job.inputs["b"]], training=False))
        np.testing.assert_allclose(answer["risk"], risk, rtol=1e-6)
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-6)
    other_shape = {"a": np.zeros((1, 2), np.float64), "b": np.zeros((1, 3), np.float64)}
    assert ENGINE.merge_key(PredictJob(served, "serving_default", other_shape, 1)) != ENGINE.merge_key(jobs[0])


def test_saved_model_jobs_run_alone(tmp_path: pathlib.Path) -> None:
    # a tf.Module's function may reduce across its batch: merging could change its answers
    served = load_version(model_repo.save_quadratic(tmp_path))
    inputs = {"x": RNG.normal(size=(4, 2))}
    batch = mergeable(served, served.signatures["score"], inputs)
    assert batch is None
    job = PredictJob(served, "score", inputs, batch)
    assert ENGINE.merge_key(job) is None
    (answer,) = ENGINE.run([job])
    np.testing.assert_allclose(answer["y"], (inputs["x"] ** 2) @ model_repo.QUADRATIC_W, rtol=1e-15)
