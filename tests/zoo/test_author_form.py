"""An author's deploy hook that the weights need: the checkpoint was saved in the training form the
hook converts (NTIRE 2022 team 08: `reparameter()` folds an identity branch its deploy forward no
longer has). Measured like a convention: the hooked form is the model when it is a clearly better
super-resolution; a hook that only makes things worse is not applied. Runs without ../shared (the
bundled trained ECBSR x4 in the layout of tests/data/user_repo/models/tinysr.py)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from helpers.paths import DATA

USER_REPO = DATA / "user_repo"
HOOKED = '''
from models.tinysr import TinySR


class NeedsHook(TinySR):
    def reparameter(self):  # the training form's identity branch, folded in for deployment
        w = self.body[2].conv.weight.data
        for i in range(w.shape[0]):
            w[i, i, 1, 1] += 1.0


class Harmful(TinySR):
    def reparameter(self):
        self.body[2].conv.weight.data *= 1.5
'''


def _trained() -> dict[str, torch.Tensor]:
    from edgesr.pipeline import BUNDLED_CHECKPOINT
    from edgesr.registry import load_model
    from edgesr.reparam import reparameterize

    deploy = reparameterize(load_model(BUNDLED_CHECKPOINT).module).state_dict()
    return {f"body.{k.split('.')[1]}.{'conv' if k.split('.')[2] == '0' else 'act'}.{k.split('.')[3]}": v.contiguous()
            for k, v in deploy.items()}


def _reference(sd, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_REPO))
    before = set(sys.modules)
    from models.tinysr import TinySR

    for name in set(sys.modules) - before:  # the user's `models` package must not stay importable for later tests
        del sys.modules[name]
    net = TinySR().eval()
    net.load_state_dict(sd)
    return net


def test_a_hook_the_weights_need_is_part_of_the_model(tmp_path, monkeypatch):
    from edgesr.reparam.author_hooks import deploy_form
    from edgesr.usermodel import load_user_model

    (tmp_path / "hooked.py").write_text(HOOKED)
    sd = _trained()
    ref = _reference(sd, monkeypatch)
    saved = dict(sd)  # the training form: the identity the hook adds is not in the weights
    w = saved["body.2.conv.weight"].clone()
    for i in range(w.shape[0]):
        w[i, i, 1, 1] -= 1.0
    saved["body.2.conv.weight"] = w
    torch.save(saved, tmp_path / "needs.pth")
    torch.save(sd, tmp_path / "plain.pth")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 23, 17), dtype=np.float32))

    um = load_user_model(tmp_path / "needs.pth", f"{tmp_path / 'hooked.py'}:NeedsHook", extra_paths=(USER_REPO,))
    form = um.author_form
    assert form["applied"] and form["hooks"] == ["<model>.reparameter()"], form
    assert form["gain_db_with_hooks"] > form["gain_db_as_built"] + 0.5 and form["gain_db_with_hooks"] > 0
    with torch.inference_mode():
        assert float((um.module(x) - ref(x)).abs().max()) < 1e-5  # the trained model, hook applied once
    deploy, rep = deploy_form(um.module, [x.numpy()])
    assert "already applied" in rep["hooks"][0]["reason"]  # not a second time in the deploy step
    with torch.inference_mode():
        assert float((deploy(x) - ref(x)).abs().max()) < 1e-4

    um = load_user_model(tmp_path / "plain.pth", f"{tmp_path / 'hooked.py'}:Harmful", extra_paths=(USER_REPO,))
    assert um.author_form is not None and um.author_form["applied"] is False, um.author_form
    assert um.author_form["gain_db_with_hooks"] < um.author_form["gain_db_as_built"]
    with torch.inference_mode():
        assert float((um.module(x) - ref(x)).abs().max()) < 1e-5  # as built: the hook only made it worse
