"""surgeon.eval: one metrics engine for eval, manifest quality records and soft's own records."""

from __future__ import annotations

import json
import math

import pytest
import torch

import surgeon
from surgeon.data import collate, training_examples
from surgeon.eval import measure_exits
from surgeon.exits import ExitSpec
from surgeon.testing import load_model, run_cli

DATA, SEQ, SAMPLES = "builtin:sotu", 24, 6


@pytest.fixture(scope="module")
def held(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    return list(training_examples(DATA, tok, seq_len=SEQ, role="eval", max_examples=SAMPLES))


def _reference(exit_model, full_model, examples):
    """Ground truth from two separately loaded models: mean CE, KL(full || exit), top-1 agreement."""
    batch = collate(examples)
    ids, labels = batch["input_ids"], batch["labels"][:, 1:]
    with torch.no_grad():
        lx = torch.log_softmax(exit_model(ids).logits[:, :-1].float(), -1)
        lf = torch.log_softmax(full_model(ids).logits[:, :-1].float(), -1)
    keep = labels != -100
    ce = -lx.gather(-1, labels.clamp_min(0)[..., None])[..., 0][keep].mean()
    kl = (lf.exp() * (lf - lx)).sum(-1)[keep].mean()
    top1 = (lx.argmax(-1) == lf.argmax(-1))[keep].float().mean()
    return float(ce), float(kl), float(top1)


def test_any_exit_equals_the_same_exit_loaded_on_its_own(tiny_models, held):
    """Prefix, narrowed and non-prefix exits from one loaded model equal surgeon.load of each exit."""
    path = tiny_models["llama"]
    full = load_model(path)
    cfg = json.loads((path / "config.json").read_text())
    from surgeon.exits import parse_exits

    exits = [ExitSpec(None, [0, 1, 2])] + parse_exits("6:ffn=0.5,4:ffn=32:heads=2", 6, cfg) + [
        ExitSpec("skip", [0, 1, 4, 5]), ExitSpec(None, list(range(6)))]
    quality, tokens = measure_exits(full, held, exits, batch_size=4)
    assert tokens == sum(len(e["input_ids"]) - 1 for e in held)
    for e, q in zip(exits, quality):
        ce, kl, top1 = _reference(surgeon.load(path, e.to_dict(), dtype="fp32"), full, held)
        assert abs(q.loss - ce) < 1e-5 and abs(q.kl_full_exit - kl) < 1e-5 and abs(q.top1_agreement - top1) < 1e-6, e
        assert q.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
    assert quality[-1].kl_full_exit == pytest.approx(0.0, abs=1e-7) and quality[-1].top1_agreement == 1.0


class _SlicedHead:
    """A VocabHead over fixed logits ``(N, V)``: identity norm (rows are indices), slices of ``width`` columns."""

    def __init__(self, logits, width):
        self.logits, self.width, self.vocab = logits, width, logits.shape[1]

    def norm(self, h):
        return h

    def slices(self):
        for s in range(0, self.vocab, self.width):
            w = min(self.width, self.vocab - s)
            yield s, w, lambda idx, s=s, w=w: self.logits[idx[:, 0].long(), s:s + w]


@pytest.mark.parametrize("width, chunk", [(512, None), (37, None), (37, 7), (1, 5)])
def test_online_scores_equal_full_vocabulary_log_softmax(width, chunk):
    """score_rows over vocabulary slices (online log-sum-exp, one pass) equals log-softmaxes of the whole
    vocabulary: CE, KL(full || exit) and top-1 agreement, with tied maxima resolved to the first index."""
    from surgeon.eval.logits import score_rows

    g = torch.Generator().manual_seed(0)
    n, v = 23, 512
    full = torch.randn(n, v, generator=g) * 4
    exit_ = full + torch.randn(n, v, generator=g)
    full[0, [3, 300]] = full[0].max() + 1  # a tie across slices: argmax is the first
    exit_[0, [3, 300]] = exit_[0].max() + 1
    exit_[1] = full[1]  # equal rows: KL 0
    targets = torch.randint(0, v, (n,), generator=g)
    rows = torch.arange(n, dtype=torch.float32)[:, None]
    both = torch.stack([full, exit_])
    head = _SlicedHead(both.reshape(2 * n, v), width)
    got = score_rows(head, {"full": rows, "exit": rows + n}, targets, "full", chunk)
    lf, lx = torch.log_softmax(full.double(), -1), torch.log_softmax(exit_.double(), -1)
    for key, lp in (("full", lf), ("exit", lx)):
        assert got[key].ce == pytest.approx(float(-lp.gather(1, targets[:, None]).sum()), rel=1e-6)
    assert got["exit"].kl == pytest.approx(float((lf.exp() * (lf - lx)).sum()), rel=1e-5)
    assert got["full"].kl == 0.0 and got["full"].agree == n
    assert got["exit"].agree == int((full.argmax(-1) == exit_.argmax(-1)).sum())
    ce_only = score_rows(head, {"exit": rows + n}, targets, None, chunk)
    assert ce_only["exit"].ce == pytest.approx(got["exit"].ce, rel=1e-6) and ce_only["exit"].agree == 0


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_loaded_head_sliced_scores_what_its_whole_forward_scores(tiny_models, family):
    """A loaded model's linear head read in slices of 37 rows (views of its weight) gives the scores of
    the head module's own whole-vocabulary forward: untied (llama) and tied with soft-capping (gemma2)."""
    from surgeon.eval.capture import exit_modules
    from surgeon.eval.logits import VocabHead, score_rows

    mods = exit_modules(load_model(tiny_models[family]))
    g = torch.Generator().manual_seed(1)
    normed = {k: torch.randn(29, 64, generator=g) * 3 for k in ("full", "exit")}
    targets = torch.randint(0, 512, (29,), generator=g)
    sliced, whole = VocabHead(mods, vocab_chunk=37), VocabHead(mods)
    whole.sliced = False
    assert sliced.sliced and len(list(sliced.slices())) == 14
    with torch.no_grad():
        a, b = (score_rows(h, normed, targets, "full", 10) for h in (sliced, whole))
    for k in normed:
        assert a[k].ce == pytest.approx(b[k].ce, rel=1e-6) and a[k].kl == pytest.approx(b[k].kl, rel=1e-5, abs=1e-6)
        assert a[k].agree == b[k].agree


def _records(manifest: dict) -> dict:
    return {e["name"]: {q["metric"]: q["value"] for q in e["quality"]} for e in manifest["exits"]}


def test_eval_equals_the_manifest_quality_records(tiny_models, tmp_path):
    out = tmp_path / "m"
    r = run_cli("manifest", tiny_models["qwen3"], "--exits", "2,4", "--eval-data", DATA, "--samples", SAMPLES,
                "--seq-len", SEQ, "-o", out)
    assert r.exit_code == 0, r.output
    records = _records(json.loads((out / "sorted_manifest.json").read_text()))
    r = run_cli("eval", out, "--exit", "2,4,6", "--data", DATA, "--samples", SAMPLES, "--seq-len", SEQ, "--json")
    assert r.exit_code == 0, r.output
    got = {q["exit"]: q for q in json.loads(r.stdout)["exits"]}
    for name, n in (("depth-2", 2), ("depth-4", 4), ("full", 6)):
        rec, q = records[name], got[n]
        assert abs(rec["loss"] - q["loss"]) <= 1e-5, name
        assert abs(rec["kl_full_exit"] - max(q["kl_full_exit"], 0.0)) <= 1e-5, name
        assert abs(rec["top1_agreement"] - q["top1_agreement"]) <= 1e-5, name


def test_soft_records_equal_eval_of_its_output(tiny_models, tmp_path):
    from surgeon.commands import soft

    out = tmp_path / "sorted"
    soft.run(soft.SoftOptions(model=tiny_models["llama"], output=out, data=DATA, exits="2,4,6", steps=2,
                              batch_size=2, seq_len=SEQ, eval_samples=SAMPLES, method="full", lr=1e-3, warmup=0,
                              save_every=0))
    records = _records(json.loads((out / "sorted_manifest.json").read_text()))
    r = run_cli("eval", out, "--all-exits", "--data", DATA, "--samples", SAMPLES, "--seq-len", SEQ, "--json")
    assert r.exit_code == 0, r.output
    got = {q["exit"]: q for q in json.loads(r.stdout)["exits"]}
    assert sorted(got) == [2, 4, 6]
    for n in (2, 4, 6):
        rec, q = records[f"depth-{n}"], got[n]
        assert abs(rec["loss"] - q["loss"]) <= 1e-5 and abs(rec["top1_agreement"] - q["top1_agreement"]) <= 1e-5, n


def test_soft_and_manifest_quality_records_mean_the_same(tiny_models, tmp_path):
    """One builder (surgeon.manifest.build.quality_record_fields): the records soft writes for its exits and
    those `surgeon manifest --eval-data` measures for the same exits on the same data carry the same fields
    with the same values; seq_len is the requested length in both, also where every example is shorter."""
    from transformers import AutoTokenizer

    from surgeon.commands import soft
    from surgeon.testing import corpus

    lines = corpus(240, seed=5)
    data = tmp_path / "instr.jsonl"  # instruction examples: each shorter than --seq-len
    data.write_text("".join(json.dumps({"instruction": lines[i], "input": "", "output": lines[i + 1]}) + "\n"
                            for i in range(0, 240, 2)))
    seq = 160
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    held = list(training_examples(str(data), tok, seq_len=seq, role="eval", max_examples=SAMPLES))
    assert len(held) == SAMPLES and max(len(x["input_ids"]) for x in held) < seq
    out = tmp_path / "sorted"
    soft.run(soft.SoftOptions(model=tiny_models["llama"], output=out, data=str(data), exits="2,4,6", steps=1,
                              batch_size=2, seq_len=seq, eval_samples=SAMPLES, method="full", lr=1e-3, warmup=0,
                              save_every=0))
    r = run_cli("manifest", out, "--eval-data", str(data), "--samples", SAMPLES, "--seq-len", seq, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.output
    by_exit = lambda p: {e["name"]: {q["metric"]: q for q in e["quality"]}  # noqa: E731
                         for e in json.loads((p / "sorted_manifest.json").read_text())["exits"]}
    from_soft, from_manifest = by_exit(out), by_exit(tmp_path / "m")
    assert set(from_soft) == set(from_manifest) == {"depth-2", "depth-4", "depth-6"}
    for name, records in from_soft.items():
        assert set(records) == set(from_manifest[name]) == {"loss", "perplexity", "kl_full_exit", "top1_agreement"}
        for metric, rec in records.items():
            other = from_manifest[name][metric]
            assert set(rec) == set(other), (name, metric)
            assert {k: v for k, v in rec.items() if k != "value"} == {k: v for k, v in other.items() if k != "value"}
            assert rec["value"] == pytest.approx(other["value"], abs=1e-5), (name, metric)
            assert rec["seq_len"] == seq and rec["samples"] == SAMPLES and rec["data"] == str(data)


def _parsed(command, cls, args: list[str]):
    """The options object a click command builds from ``args`` (parsed only: nothing runs)."""
    from surgeon.options import build

    with command.make_context(command.name, [str(a) for a in args]) as ctx:
        return build(cls, **ctx.params)


def test_compute_dtype_is_its_own_flag_and_dtype_its_hidden_older_spelling(tiny_models):
    """eval, analyze and generate: --compute-dtype (the dtype the model runs in); --dtype still parses to
    the same field but is not in --help (--dtype elsewhere is the output cast)."""
    from surgeon.cli.analyze import analyze_cmd
    from surgeon.cli.eval import eval_cmd
    from surgeon.cli.generate import generate_cmd
    from surgeon.commands.analyze import AnalyzeOptions
    from surgeon.commands.eval import EvalOptions
    from surgeon.commands.generate import GenerateOptions
    from surgeon.errors import UsageError

    m = tiny_models["llama"]
    for cmd, cls, extra in ((eval_cmd, EvalOptions, ["--exit", "3"]), (analyze_cmd, AnalyzeOptions, []),
                            (generate_cmd, GenerateOptions, ["--prompt", "hi"])):
        help_text = run_cli(cmd.name, "--help").output
        assert "--compute-dtype" in help_text and "--dtype" not in help_text, cmd.name
        new = _parsed(cmd, cls, [m, *extra, "--compute-dtype", "fp16"])
        assert new.compute_dtype == "fp16" and _parsed(cmd, cls, [m, *extra, "--dtype", "fp16"]) == new
        assert _parsed(cmd, cls, [m, *extra]).compute_dtype is None
        with pytest.raises(UsageError, match="given twice"):
            _parsed(cmd, cls, [m, *extra, "--dtype", "bf16", "--compute-dtype", "fp16"])
    # and the measurement is the same under either spelling
    args = ["eval", m, "--exit", "3", "--samples", 2, "--seq-len", SEQ, "--no-kl", "--json"]
    a, b = run_cli(*args, "--compute-dtype", "fp32"), run_cli(*args, "--dtype", "fp32")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert json.loads(a.stdout)["exits"] == json.loads(b.stdout)["exits"]


def test_output_folder_is_one_field_with_one_spelling(tmp_path):
    """-o/--output everywhere (field ``output``); analyze and demo still take their older --out."""
    from surgeon.cli.analyze import analyze_cmd
    from surgeon.cli.demo import demo_cmd
    from surgeon.commands.analyze import AnalyzeOptions
    from surgeon.commands.demo import DemoOptions

    out = tmp_path / "o"
    for flag in ("-o", "--output", "--out"):
        assert _parsed(analyze_cmd, AnalyzeOptions, ["m", flag, out]).output == out
        assert _parsed(demo_cmd, DemoOptions, [flag, out]).output == out
    assert _parsed(analyze_cmd, AnalyzeOptions, ["m"]).output.name == "analysis"  # the default is unchanged


@pytest.mark.parametrize("args, message", [
    (["eval", "{m}", "--exit", "3", "--samples", "0"], "--samples 0 is below 1"),
    (["eval", "{m}", "--exit", "3", "--batch-size", "0"], "--batch-size 0 is below 1"),
    (["eval", "{m}", "--exit", "3", "--seq-len", "1"], "--seq-len must be at least 2"),
    (["manifest", "{m}", "--in-place", "--samples", "0"], "--samples 0 is below 1"),
    (["manifest", "{m}", "--in-place", "--batch-size", "0"], "--batch-size 0 is below 1"),
    (["heal", "{m}", "--data", "builtin:sotu", "-o", "{o}", "--eval-samples", "-1"], "--eval-samples -1 is below 0"),
    (["soft", "{m}", "--data", "builtin:sotu", "-o", "{o}", "--eval-batch-size", "0"], "--eval-batch-size 0 is below 1"),
])
def test_one_evaluation_validator_names_each_commands_flag(tiny_models, tmp_path, args, message):
    r = run_cli(*[a.format(m=tiny_models["llama"], o=tmp_path / "o") for a in args])
    assert r.exit_code != 0 and message in r.output, r.output
    assert not (tmp_path / "o").exists()
