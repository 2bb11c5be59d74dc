"""A zoo entry becomes a model through the MODEL seam (edgesr.resolve.load_user_code), the same
way `--model FILE.py:NAME` does. Runs without ../shared: the entry is tests/data/user_repo's
TinySR with edgesr's bundled ECBSR x4 weights renamed to its layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.paths import DATA

USER_REPO = DATA / "user_repo"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from edgesr.pipeline import BUNDLED_CHECKPOINT
    from edgesr.registry import load_model
    from edgesr.reparam import reparameterize

    deploy = reparameterize(load_model(BUNDLED_CHECKPOINT).module).state_dict()
    sd = {}
    for k, v in deploy.items():  # backbone.N.0.* -> body.N.conv.*, backbone.N.1.weight -> body.N.act.weight
        _, n, i, name = k.split(".")
        sd[f"body.{n}.{'conv' if i == '0' else 'act'}.{name}"] = v.contiguous()
    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(sd, str(p))
    return p


def _entry(weights: Path, **kw):
    from edgesr.zoo_index import ZooEntry

    return ZooEntry(name="tiny", code=f"{USER_REPO / 'models' / 'tinysr.py'}:TinySR", weights=weights, paths=[USER_REPO],
                    scale=4, **kw)


def test_entry_options_reach_the_model_through_resolve(weights):
    from edgesr.resolve import load_user_code

    # kwargs pass through: data_range=255 makes the model expect [0, 255], which is measured
    entry = _entry(weights, kwargs={"data_range": 255}, input_range=255.0)
    um = load_user_code(entry.weights, entry.user_options(), scale=entry.scale, quick=True)
    assert um.conventions.chosen.input_range == 255.0
    assert um.spec.scale == 4 and um.ref.name == "TinySR"
    # the index's input_range is what the zoo checks, never given to the search as a fact
    assert entry.user_options()["input_range"] is None
    x = torch.rand(1, 3, 12, 16)
    plain = load_user_code(weights, _entry(weights).user_options(), scale=4, quick=True)
    assert float((um.module(x) - plain.module(x)).abs().max()) < 1e-4  # both in edgesr's [0, 1] convention


def test_convert_options_from_an_entry(weights, tmp_path):
    from edgesr.pipeline import ConvertOptions

    entry = _entry(weights, kwargs={"num_feat": 16}, key="params", strict=False)
    opts = ConvertOptions(outdir=tmp_path / "o", checkpoint=weights).with_user_model(entry.user_options())
    assert (opts.model, opts.model_kwargs, opts.strict, opts.weights_key, opts.import_paths) == (
        entry.code, {"num_feat": 16}, False, "params", (USER_REPO,))
    assert opts.user_options() == {"ref": entry.code, "kwargs": {"num_feat": 16}, "strict": False, "key": "params",
                                   "extra_paths": (USER_REPO,), "input_range": None}


def test_quick_check_runs_the_entry(weights, tmp_path):
    from edgesr.zoo import quick_check

    res = quick_check(_entry(weights, input_range=1.0), tmp_path)
    assert res["scale"] == 4 and res["inferred_input_range"] == 1.0 and res["dynamic"] is True
    assert res["parity_max_abs"] < 1e-4, res
