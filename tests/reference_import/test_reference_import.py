"""promptlab-import: Dassl checkpoints and few-shot selections written in the reference's exact format by fixtures,
the restricted unpickler (a malicious pickle is refused and never runs), and evaluation of an imported prompt."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from promptlab.config.registry import plain
from promptlab.engine.build import build_parts, load_learner
from promptlab.errors import ConfigError
from promptlab.methods import CoCoOpPrompts, CoOpPrompts, logits_from_features
from promptlab.methods.prograd import ProGradPrompts
from promptlab.models import load_clip_from_config
from promptlab.reference_import.checkpoint import BackboneCheckError, LayoutCheckError, import_checkpoint
from promptlab.reference_import.cli import main as import_main
from promptlab.reference_import.shots import import_shots, relative_path
from promptlab.reference_import.unpickler import RefusedPickleError, load_file, torch_load
from promptlab.train import run, run_dir_of
from tests.conftest import make_random_clip
from tests.runs import compose_cfg, random_checkpoint, tiny_overrides


class WarmupScheduler(LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py): its state_dict() keeps the successor object."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def write_dassl_checkpoint(path: Path, state: dict[str, torch.Tensor], epoch: int = 2) -> Path:
    """What Dassl's save_model/save_checkpoint write: state_dict, epoch, optimizer and scheduler state, val_result."""
    params = [torch.nn.Parameter(v.detach().clone().float()) for k, v in state.items() if not k.startswith("token_")]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    sched = WarmupScheduler(optim, CosineAnnealingLR(optim, T_max=epoch), warmup_epoch=1, cons_lr=1e-5)
    sum(p.sum() for p in params).backward()
    optim.step()
    sched.step()
    torch.save({"state_dict": OrderedDict(state), "epoch": epoch, "optimizer": optim.state_dict(),
                "scheduler": sched.state_dict(), "val_result": None}, path)
    return path


def reference_buffers(clip, n_ctx: int, classnames: list[str]) -> dict[str, torch.Tensor]:
    """token_prefix / token_suffix as the reference's PromptLearner registers them (fp16, full 77 tokens)."""
    tokens = clip.tokenize([" ".join(["X"] * n_ctx) + f" {name.replace('_', ' ')}." for name in classnames])
    embedding = clip.embed_tokens(tokens).half()
    return {"token_prefix": embedding[:, :1], "token_suffix": embedding[:, 1 + n_ctx:]}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """The tiny random CLIP as a model config (overrides), its FrozenCLIP, and a context [4, 64]."""
    root = tmp_path_factory.mktemp("backbone")
    model = [f"model.weights_file={random_checkpoint(root / 'random_clip.pt')}"]
    clip = load_clip_from_config(compose_cfg(model).model)
    ctx = torch.randn(4, clip.ctx_dim, generator=torch.Generator().manual_seed(0))
    return model, clip, ctx


NAMES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CoOp run on the tiny toy world: its config, record and prompt file."""
    root = tmp_path_factory.mktemp("coop")
    cfg = compose_cfg([*tiny_overrides(root), "method=coop", "method.optim.epochs=2", "run_name=coop"])
    record = run(cfg)
    return root, cfg, record, run_dir_of(cfg) / "prompt_learner.pt"


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    live = tmp_path / "ran_unrestricted"
    pickle.loads(pickle.dumps(Evil(live)))  # the payload is live: plain pickle runs it
    assert live.exists()
    marker = tmp_path / "ran"
    shots = tmp_path / "shot_1-seed_1.pkl"
    shots.write_bytes(pickle.dumps({"train": [Evil(marker)], "val": []}))
    with pytest.raises(RefusedPickleError, match="system"):
        load_file(shots)
    ckpt = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": {"ctx": torch.zeros(2, 4)}, "epoch": 1, "scheduler": Evil(marker)}, ckpt)
    with pytest.raises(RefusedPickleError, match="system"):
        torch_load(ckpt)
    eval_call = tmp_path / "eval.pkl"  # builtins beyond the containers are refused too
    eval_call.write_bytes(b"cbuiltins\neval\n(S'print(1)'\ntR.")
    with pytest.raises(RefusedPickleError, match="builtins.eval"):
        load_file(eval_call)
    assert not marker.exists()


def test_imported_context_scores_as_the_original(backbone, tmp_path):
    model, clip, ctx = backbone
    original = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    with torch.no_grad():
        original.ctx.copy_(ctx)
    original.set_classnames(clip, NAMES)
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-2", {"ctx": ctx, **reference_buffers(clip, 4, NAMES)})
    out = tmp_path / "imported.pt"
    info = import_checkpoint(ckpt, out, model, classnames=NAMES)
    assert info["method"] == "coop" and info["epoch"] == 2 and "token_prefix equal" in info["backbone_check"]
    assert info["layout_check"].startswith("token_suffix equals")
    with pytest.raises(LayoutCheckError, match="class 0"):  # the training classes in another order
        import_checkpoint(ckpt, tmp_path / "shuffled.pt", model, classnames=NAMES[::-1])
    # Loaded the way promptlab-train's load_prompt= loads it, into the toy config's learner ("a photo of a" init).
    learner = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    learner.set_classnames(clip, NAMES)
    load_learner(out, learner, clip=clip)
    feats = torch.nn.functional.normalize(torch.randn(8, clip.embed_dim), dim=-1)
    scores = logits_from_features(feats, learner(clip), clip.logit_scale())
    assert torch.equal(scores, logits_from_features(feats, original(clip), clip.logit_scale()))
    fresh = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    fresh.set_classnames(clip, NAMES)
    assert not torch.allclose(fresh(clip), learner(clip))  # the comparison can fail


@pytest.mark.slow
def test_imported_reference_prompt_evaluates_to_the_same_accuracy(trained, tmp_path):
    root, cfg, record, prompt = trained
    saved = torch.load(prompt, weights_only=True)
    clip = load_clip_from_config(cfg.model)
    ctx = saved["state_dict"]["ctx"]
    # PREC=fp32/amp: the reference saves the context in float32 (fp16 is checked below).
    state = {"ctx": ctx.clone(), **reference_buffers(clip, ctx.shape[0], saved["train_classnames"])}
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-2", state)
    out = tmp_path / "imported.pt"
    model = [o for o in tiny_overrides(root) if o.startswith("model.")]
    info = import_checkpoint(ckpt, out, model, classnames=saved["train_classnames"])
    assert info["method"] == "coop" and info["epoch"] == 2 and "token_prefix equal" in info["backbone_check"]
    imported = torch.load(out, weights_only=True)
    assert torch.equal(imported["state_dict"]["ctx"], ctx)
    assert imported["backbone"] == saved["backbone"]
    again = run(compose_cfg([*tiny_overrides(root), "method=coop", "method.optim.epochs=0", f"load_prompt={out}",
                             "run_name=imported"]))
    for key in ("base_acc", "novel_acc", "hm"):
        assert again["metrics"][key] == record["metrics"][key]
    zero_shot = run(compose_cfg([*tiny_overrides(root), "method=coop", "method.optim.epochs=0", "run_name=zs"]))
    assert zero_shot["metrics"]["base_acc"] != record["metrics"]["base_acc"]  # the comparison can fail


def test_fp16_context_and_backbone_checks(backbone, tmp_path):
    model, clip, ctx = backbone
    names = NAMES
    half = write_dassl_checkpoint(tmp_path / "half.pth.tar-2", {"ctx": ctx.half(), **reference_buffers(clip, 4, names)})
    import_checkpoint(half, tmp_path / "half.pt", model)
    assert torch.equal(torch.load(tmp_path / "half.pt", weights_only=True)["state_dict"]["ctx"], ctx.half().float())
    other = make_random_clip(seed=7)  # same architecture, other weights: its start token differs
    wrong = write_dassl_checkpoint(tmp_path / "other.pth.tar-2", {"ctx": ctx, **reference_buffers(other, 4, names)})
    with pytest.raises(BackboneCheckError, match="token_prefix"):
        import_checkpoint(wrong, tmp_path / "wrong.pt", model)
    narrow = write_dassl_checkpoint(tmp_path / "narrow.pth.tar-2", {"ctx": torch.zeros(4, 32)})
    with pytest.raises(BackboneCheckError, match="32-wide"):
        import_checkpoint(narrow, tmp_path / "narrow.pt", model)


def test_cocoop_and_kgcoop_keys(backbone, tmp_path):
    model, clip, _ = backbone
    cocoop = CoCoOpPrompts(clip, init_seed=0)
    state = {k: v.half() for k, v in cocoop.state_dict().items()}
    ckpt = write_dassl_checkpoint(tmp_path / "cocoop.pth.tar-10", state, epoch=10)
    info = import_checkpoint(ckpt, tmp_path / "cocoop.pt", model)  # method guessed from meta_net.linear2
    imported = torch.load(tmp_path / "cocoop.pt", weights_only=True)
    assert info["method"] == "cocoop" and imported["method"]["name"] == "cocoop"
    assert set(imported["state_dict"]) == set(state)
    assert all(torch.equal(imported["state_dict"][k], v.float()) for k, v in state.items())
    # KgCoOp saves an unused bias vector and one-layer meta-net next to its context: left out, and said so.
    kg = {"ctx": torch.randn(4, 64), "bias_vectors": torch.randn(1, 64), "meta_net.linear1.weight": torch.randn(64, 64),
          "meta_net.linear1.bias": torch.randn(64)}
    ckpt = write_dassl_checkpoint(tmp_path / "kg.pth.tar-100", kg, epoch=100)
    info = import_checkpoint(ckpt, tmp_path / "kg.pt", model, method="kgcoop")
    assert set(torch.load(tmp_path / "kg.pt", weights_only=True)["state_dict"]) == {"ctx"}
    assert len(info["dropped_keys"]) == 3


def test_prograd_checkpoint_keeps_the_references_fixed_words(backbone, tmp_path):
    model, clip, _ = backbone
    # Oxford Pets' ProGrad phrase "a type of pet, a photo of a" is 8 words and 9 tokens: the reference learns 16
    # slots (8 zeros + 8 tokens) and keeps the last "a" as a fixed word, saved in its token_suffix.
    learner = ProGradPrompts(clip, templates=["a photo of a {}."], dataset="oxford_pets", n_ctx=16)
    with torch.no_grad():
        learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(1)))
    tokens = clip.tokenize([f"{'X ' * 8}a type of pet, a photo of a {name}." for name in NAMES])
    embedding = clip.embed_tokens(tokens).half()
    state = {"ctx": learner.ctx.detach(), "token_prefix": embedding[:, :1], "token_suffix": embedding[:, 17:]}
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-100", state, epoch=100)
    info = import_checkpoint(ckpt, tmp_path / "pg.pt", [*model, "dataset=oxford_pets"], method="prograd",
                             classnames=NAMES)
    assert info["layout_check"].startswith("token_suffix equals")
    imported = ProGradPrompts(clip, templates=["a photo of a {}."], dataset="oxford_pets", n_ctx=16)
    imported.set_classnames(clip, NAMES)
    load_learner(tmp_path / "pg.pt", imported, clip=clip)
    learner.set_classnames(clip, NAMES)
    assert torch.allclose(imported(clip), learner(clip))
    with pytest.raises(LayoutCheckError):  # as a CoOp context the fixed "a" would be lost
        import_checkpoint(ckpt, tmp_path / "coop.pt", [*model, "dataset=oxford_pets"], classnames=NAMES)


def test_cli_prints_the_evaluation_command(backbone, tmp_path, capsys):
    model, _, ctx = backbone
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-2", {"ctx": ctx})
    assert import_main(["checkpoint", str(ckpt), "--out", str(tmp_path / "p.pt"), *model]) == 0
    printed = capsys.readouterr().out
    assert "method.learner.n_ctx=4" in printed and f"load_prompt={tmp_path / 'p.pt'}" in printed
    assert "no token_prefix" in printed


@pytest.fixture
def fake_dassl(monkeypatch):
    """Dassl's Datum importable under its own module name, so that pickle writes the reference's layout."""

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    Datum.__module__ = names[-1]
    Datum.__qualname__ = "Datum"
    sys.modules[names[-1]].Datum = Datum
    return Datum


@pytest.mark.slow
def test_imported_shots_are_the_ones_a_run_trains_on(trained, tmp_path, fake_dassl):
    root, cfg, _, _ = trained
    dataset_dir = Path(cfg.paths.data_root) / cfg.dataset.dataset_dir
    split = json.loads((dataset_dir / cfg.dataset.split_file).read_text())
    elsewhere = f"/home/someone/DATA/{dataset_dir.name}/images"  # the machine that drew the selection

    def pick(items, k):  # the *last* k images of each class: not what promptlab's sampler draws
        by_label: dict[int, list] = {}
        for rel, label, name in items:
            by_label.setdefault(label, []).append(fake_dassl(f"{elsewhere}/{rel}", label, 0, name))
        return [d for label in sorted(by_label) for d in by_label[label][-k:]]

    reference = tmp_path / "split_fewshot"
    reference.mkdir()
    chosen = {"train": pick(split["train"], 2), "val": pick(split["val"], 1)}
    with open(reference / "shot_2-seed_1.pkl", "wb") as f:
        pickle.dump(chosen, f, protocol=pickle.HIGHEST_PROTOCOL)
    out = tmp_path / "imported_shots"
    (written,) = import_shots(reference, out, dataset_dir=dataset_dir)
    payload = json.loads(written.read_text())
    assert payload["shots"] == 2 and payload["seed"] == 1
    assert payload["train"][0] == [f"images/{split['train'][0][0].rsplit('/', 1)[0]}/" +
                                   chosen["train"][0]._impath.rsplit("/", 1)[1], chosen["train"][0]._label]
    parts = build_parts(compose_cfg([*tiny_overrides(root), "method=coop", f"paths.fewshot_dir={out}"]))
    expected = {str(dataset_dir / relative_path(d._impath, dataset_dir.name)) for d in chosen["train"]
                if d._classname in parts.data.train_classnames}
    assert {item.impath for item in parts.data.train_items} == expected
    default = build_parts(compose_cfg([*tiny_overrides(root), "method=coop"]))
    assert {item.impath for item in default.data.train_items} != expected  # promptlab's own draw differs
    with pytest.raises(Exception, match="--force"):
        import_shots(reference, out, dataset_dir=dataset_dir)
    assert plain(compose_cfg([*tiny_overrides(root), f"paths.fewshot_dir={out}"]))["paths"]["fewshot_dir"] == str(out)


def test_reference_paths_are_cut_after_the_dataset_folder():
    assert relative_path("/a/b/oxford_pets/images/x.jpg", "/data/oxford_pets") == "images/x.jpg"
    assert relative_path(r"D:\data\oxford_pets\images\x.jpg", "oxford_pets") == "images/x.jpg"
    assert relative_path("/a/pets/images/x.jpg", "oxford_pets", reference_root="/a/pets") == "images/x.jpg"
    with pytest.raises(Exception, match="--reference-root"):
        relative_path("/a/pets/images/x.jpg", "oxford_pets")


def test_shots_cli_converts_a_split_fewshot_folder_that_fewshot_splits_then_reads(tmp_path, fake_dassl, capsys):
    from promptlab.data.fewshot import fewshot_splits
    from promptlab.data.types import DatasetSplits, Datum

    dataset_dir = tmp_path / "data" / "oxford_pets"
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    for name in names:
        (dataset_dir / "images").mkdir(parents=True, exist_ok=True)
        (dataset_dir / "images" / name).write_bytes(b"x")
    items = [Datum(str(dataset_dir / "images" / n), i % 2, ["cat", "dog"][i % 2]) for i, n in enumerate(names)]
    splits = DatasetSplits("oxford_pets", dataset_dir, train=items, val=items[:2], test=items,
                           classnames=["cat", "dog"])
    folder = dataset_dir / "split_fewshot"
    folder.mkdir()
    reference = {"train": [fake_dassl(f"/root/DATA/oxford_pets/images/{n}", i % 2, 0, "x") for i, n in
                           enumerate(names) if n in ("c.jpg", "d.jpg")],
                 "val": [fake_dassl("/root/DATA/oxford_pets/images/a.jpg", 0, 0, "cat")]}
    (folder / "shot_1-seed_3.pkl").write_bytes(pickle.dumps(reference, protocol=pickle.HIGHEST_PROTOCOL))
    assert import_main(["shots", str(folder)]) == 0
    assert "shot_1-seed_3.json" in capsys.readouterr().out
    # promptlab's default location: a 1-shot seed-3 run of this dataset now trains on the reference's images.
    chosen = fewshot_splits(splits, 1, 3, cache_dir=None)
    assert [d.impath for d in chosen.train] == [items[2].impath, items[3].impath]
    assert [d.impath for d in chosen.val] == [items[0].impath]
    assert any("imported from the reference" in note for note in chosen.notes)
    with pytest.raises(SystemExit):  # an existing selection is not replaced silently
        import_main(["shots", str(folder)])
    assert "--force" in capsys.readouterr().err
    assert import_main(["shots", str(folder), "--force"]) == 0
    elsewhere = tmp_path / "other" / "oxford_pets" / "split_fewshot"
    elsewhere.mkdir(parents=True)
    (elsewhere / "shot_1-seed_3.pkl").write_bytes((folder / "shot_1-seed_3.pkl").read_bytes())
    with pytest.raises(SystemExit):  # default dataset dir = the parent folder, which has none of the images
        import_main(["shots", str(elsewhere)])
    assert "none of the images" in capsys.readouterr().err


# ------------------------------------------------------------------ deep prompts (MaPLe, IVLP, PromptSRC, VPT)
def reference_deep_state(learner, clip, method: str, classnames: list[str], fp16: bool = True) -> dict:
    """The state_dict that the reference's CustomCLIP saves (multimodal-prompt-learning trainers/maple.py,
    independentVL.py, vpt.py; PromptSRC trainers/promptsrc.py), from a promptlab learner. fp16 (PREC=fp16): the
    frozen CLIP in fp16 under the CustomCLIP's names, prompt_learner.* (ctx and MaPLe's proj in fp16, as the
    reference casts them), IVLP's tokens inside the encoders (VPT, resblocks.N.VPT_shallow) in fp32; fp16=False
    (PREC=fp32 or amp, `clip_model.float()`): everything in fp32."""
    half = (lambda t: t.half()) if fp16 else (lambda t: t.float())
    state: dict[str, torch.Tensor] = {}
    for key, value in clip.model.state_dict().items():
        if key.startswith("visual."):
            state["image_encoder." + key[len("visual."):]] = half(value)
            if method == "promptsrc":  # the teacher: a second frozen image tower inside the prompt learner
                state["prompt_learner.ZS_image_encoder." + key[len("visual."):]] = half(value)
        elif key.startswith(("transformer.", "ln_final.")) or key in ("positional_embedding", "text_projection"):
            state["text_encoder." + key] = half(value)
    state["logit_scale"] = half(clip.model.state_dict()["logit_scale"])
    if method != "vpt":
        n_ctx = learner.n_ctx
        prompts = [f"{learner.ctx_text} {name}." for name in classnames]
        embedding = half(clip.embed_tokens(clip.tokenize(prompts)))
        state["prompt_learner.token_prefix"] = embedding[:, :1]
        state["prompt_learner.token_suffix"] = embedding[:, 1 + n_ctx:]
        state["prompt_learner.ctx"] = half(learner.ctx.detach())
    if method == "maple":
        state["prompt_learner.proj.weight"] = half(learner.vision_proj.weight.detach())
        state["prompt_learner.proj.bias"] = half(learner.vision_proj.bias.detach())
        for j, tokens in enumerate(learner.text_deep):
            state[f"prompt_learner.compound_prompts_text.{j}"] = tokens.detach().clone()
            proj = learner.vision_deep_proj[j]
            state[f"prompt_learner.compound_prompt_projections.{j}.weight"] = proj.weight.detach().clone()
            state[f"prompt_learner.compound_prompt_projections.{j}.bias"] = proj.bias.detach().clone()
        return state
    for j, tokens in enumerate(getattr(learner, "text_deep", [])):
        state[f"text_encoder.transformer.resblocks.{j + 1}.VPT_shallow"] = tokens.detach().clone()
    if learner.encodes_images:
        state["image_encoder.VPT"] = learner.vision_ctx.detach().clone()
        for j, tokens in enumerate(learner.vision_deep):
            state[f"image_encoder.transformer.resblocks.{j + 1}.VPT_shallow"] = tokens.detach().clone()
    return state


def deep_learner(method: str, clip, seed: int):
    from promptlab.methods.ivlp import IVLPPrompts
    from promptlab.methods.maple import MaPLePrompts
    from promptlab.methods.promptsrc import PromptSRCPrompts
    from promptlab.methods.vpt import VPTPrompts

    # Depth 2: the tiny CLIP has 2 blocks per tower, so block 1 gets deep tokens.
    make = {
        "maple": lambda: MaPLePrompts(clip, depth=2, init_seed=seed),
        "ivlp": lambda: IVLPPrompts(clip, text_depth=2, vision_depth=2, init_seed=seed),
        "ivlp_language": lambda: IVLPPrompts(clip, n_ctx=4, text_depth=2, vision_depth=0, init_seed=seed),
        "promptsrc": lambda: PromptSRCPrompts(clip, text_depth=2, vision_depth=2, init_seed=seed),
        "vpt": lambda: VPTPrompts(clip, n_ctx_vision=3, vision_depth=2, init_seed=seed),
    }
    return make[method]()


def trained_deep_learner(method: str, clip):
    """A deep learner whose tensors moved away from their initialisation (as training moves them), with the
    tensors the reference stores in fp16 (ctx, MaPLe's proj) rounded to fp16 values, as its fp16 run holds them."""
    learner = deep_learner(method, clip, seed=0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in learner.named_parameters():
            param.add_(0.5 * param.abs().mean() * torch.randn(param.shape, generator=gen))
            if name == "ctx" or name.startswith("vision_proj."):
                param.copy_(param.half().float())
    learner.set_classnames(clip, NAMES)
    return learner


def scores(learner, clip, images):
    with torch.no_grad():
        feats = learner.encode_images(clip, images)
        return logits_from_features(feats, learner(clip, feats).float(), clip.logit_scale())


# MaPLe, IVLP and PromptSRC in the fast suite; the other two key layouts in the slow one (a second each).
@pytest.mark.parametrize("method", ["maple", "ivlp", "promptsrc", pytest.param("ivlp_language", marks=pytest.mark.slow),
                                    pytest.param("vpt", marks=pytest.mark.slow)])
def test_deep_checkpoint_imports_and_scores_as_the_original(backbone, tmp_path, method):
    model, clip, _ = backbone
    original = trained_deep_learner(method, clip)
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-5", reference_deep_state(original, clip, method, NAMES),
                                  epoch=5)
    out = tmp_path / "imported.pt"
    info = import_checkpoint(ckpt, out, model, classnames=NAMES)  # the method is read from the keys
    assert info["method"] == method and info["epoch"] == 5
    assert "frozen CLIP tensors equal" in info["backbone_check"]
    if method != "vpt":
        assert "token_prefix equal" in info["backbone_check"] and "token_suffix equals" in info["layout_check"]
    assert any("frozen CLIP tensors" in d for d in info["dropped_keys"])
    payload = torch.load(out, weights_only=True)
    assert set(payload["state_dict"]) == {k for k, _ in original.named_parameters()}
    loaded = deep_learner(method, clip, seed=1)  # another initialisation: loading must replace every tensor
    loaded.set_classnames(clip, NAMES)
    images = torch.randn(16, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(4))
    labels = scores(original, clip, images).argmax(dim=-1)[torch.randperm(16, generator=torch.Generator())]
    assert not torch.equal(scores(loaded, clip, images), scores(original, clip, images))  # the check can fail
    load_learner(out, loaded, clip=clip)
    assert torch.equal(scores(loaded, clip, images), scores(original, clip, images))
    correct = [int((scores(m, clip, images).argmax(dim=-1) == labels).sum()) for m in (original, loaded)]
    assert correct[0] == correct[1]


def test_deep_checkpoint_checks_backbone_and_fixed_words(backbone, tmp_path):
    model, clip, _ = backbone
    original = trained_deep_learner("maple", clip)
    state = reference_deep_state(original, clip, "maple", NAMES)
    other = make_random_clip(seed=7)
    foreign = {**state, **{k: v for k, v in reference_deep_state(original, other, "maple", NAMES).items()
                           if k.startswith(("text_encoder.", "image_encoder."))}}
    with pytest.raises(BackboneCheckError, match="frozen CLIP weight"):
        import_checkpoint(write_dassl_checkpoint(tmp_path / "other.tar-5", foreign), tmp_path / "o.pt", model)
    # A run with a random context ("X X {name}."): its suffix has no "of a" after the context.
    random_ctx = reference_deep_state(original, clip, "maple", NAMES)
    tokens = clip.tokenize([f"X X {name}." for name in NAMES])
    random_ctx["prompt_learner.token_suffix"] = clip.embed_tokens(tokens).half()[:, 3:]
    ckpt = write_dassl_checkpoint(tmp_path / "random.tar-5", random_ctx)
    with pytest.raises(LayoutCheckError, match="ctx_init=null"):
        import_checkpoint(ckpt, tmp_path / "r.pt", model)
    info = import_checkpoint(ckpt, tmp_path / "r.pt", [*model, "method.learner.ctx_init=null"], classnames=NAMES)
    assert "no fixed words" in info["layout_check"] and "token_suffix equals" in info["layout_check"]
    good = write_dassl_checkpoint(tmp_path / "good.tar-5", state)
    with pytest.raises(LayoutCheckError, match="class 0"):  # the training classes in another order
        import_checkpoint(good, tmp_path / "g.pt", model, classnames=NAMES[::-1])
    gap = {k: v for k, v in reference_deep_state(trained_deep_learner("ivlp", clip), clip, "ivlp", NAMES).items()
           if k != "text_encoder.transformer.resblocks.1.VPT_shallow"}
    gap["text_encoder.transformer.resblocks.2.VPT_shallow"] = torch.zeros(2, clip.ctx_dim)
    with pytest.raises(ConfigError, match="without gaps"):
        import_checkpoint(write_dassl_checkpoint(tmp_path / "gap.tar-5", gap), tmp_path / "gap.pt", model)


def test_cli_prints_the_deep_evaluation_command(backbone, tmp_path, capsys):
    model, clip, _ = backbone
    state = reference_deep_state(trained_deep_learner("promptsrc", clip), clip, "promptsrc", NAMES)
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-20", state, epoch=20)
    assert import_main(["checkpoint", str(ckpt), "--out", str(tmp_path / "p.pt"), *model]) == 0
    printed = capsys.readouterr().out
    assert "(promptsrc, epoch 20)" in printed and "ZS_image_encoder" in printed
    command = printed.split("evaluate it with:\n")[1].strip()
    assert command.startswith("python -m promptlab.train method=promptsrc method.learner.n_ctx=4")
    assert "method.learner.text_depth=2" in command and "method.learner.vision_depth=2" in command
    assert command.endswith(f"method.optim.epochs=0 load_prompt={tmp_path / 'p.pt'}")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["maple", "promptsrc"])
def test_imported_deep_reference_prompt_evaluates_to_the_same_counts(tmp_path, method):
    """A toy-world run, its prompt written as the reference's checkpoint, imported, evaluated again."""
    depth = ["method.learner.depth=2"] if method == "maple" else [
        "method.learner.text_depth=2", "method.learner.vision_depth=2", "method.learner.gpa_mean=1"]
    base = [*tiny_overrides(tmp_path), f"method={method}", *depth, "method.loader.batch_size=8"]
    record = run(compose_cfg([*base, "method.optim.epochs=2", "run_name=trained"]))
    cfg = compose_cfg([*base, "run_name=trained"])
    saved = torch.load(run_dir_of(cfg) / "prompt_learner.pt", weights_only=True)
    clip = load_clip_from_config(cfg.model)
    learner = deep_learner(method, clip, seed=0)
    learner.load_state_dict(saved["state_dict"])
    # PREC=fp32/amp: the reference saves every prompt tensor in fp32 (fp16 storage is checked in the fast test).
    state = reference_deep_state(learner, clip, method, saved["train_classnames"], fp16=False)
    ckpt = write_dassl_checkpoint(tmp_path / "model.pth.tar-2", state)
    out = tmp_path / "imported.pt"
    model = [o for o in tiny_overrides(tmp_path) if o.startswith("model.")]
    info = import_checkpoint(ckpt, out, model, classnames=saved["train_classnames"])
    assert info["method"] == method
    imported = torch.load(out, weights_only=True)["state_dict"]
    assert set(imported) == set(saved["state_dict"])
    assert all(torch.equal(value, saved["state_dict"][key]) for key, value in imported.items())
    again = run(compose_cfg([*base, "method.optim.epochs=0", f"load_prompt={out}", "run_name=imported"]))
    counts = [[(e["name"], e["n_correct"], e["n_images"]) for e in r["evaluations"]] for r in (record, again)]
    assert counts[0] == counts[1]
