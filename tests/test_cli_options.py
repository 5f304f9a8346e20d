"""The hooks-mm options' values without a model: layer / neuron lists, threads, run directories,
selector expressions, and each bad value as one line naming the fix (argparse's exit status 2)."""

from __future__ import annotations

import inspect

import pytest

from hooks_mm.cli import main
from hooks_mm.cli import options as opts
from hooks_mm.cli.expressions import METRICS, metric_name, parse_selector
from hooks_mm.cli.options import Neurons, OptionError, auto_threads, check_run_dir, clear_run_dir, parse_indices
from hooks_mm.selectors import (
    SELECTORS,
    After,
    AudioTime,
    First,
    Frame,
    Image,
    Last,
    LastN,
    NonPad,
    Positions,
    Rows,
    Text,
    Video,
)


def test_indices_are_ints_and_inclusive_ranges() -> None:
    assert parse_indices("0,2,5-7", "--layers") == [0, 2, 5, 6, 7]
    assert parse_indices(" 3 ", "--layers") == [3] and parse_indices("4-4", "--layers") == [4]


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "not an index or a range"),
        ("a", "not an index or a range"),
        ("-1", "not an index or a range"),
        ("1.5", "not an index or a range"),
        ("0,,1", "'' is not an index"),
        ("3-1", "runs backwards: write it as 1-3"),
        ("0,0", "names 0 more than once"),
        ("0-2,1", "names 1 more than once"),
    ],
)
def test_bad_indices_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(OptionError, match="--layers") as e:
        parse_indices(text, "--layers")
    assert says in str(e.value)


def test_neurons_are_a_count_or_indices_checked_against_the_width() -> None:
    assert Neurons.parse("16").resolve(20) == list(range(16))
    assert Neurons.parse("3,7,10-12").resolve(20) == [3, 7, 10, 11, 12]
    assert Neurons.parse("5-5").resolve(20) == [5]
    with pytest.raises(OptionError, match=r"--neurons 21: a layer has 20 MLP neurons: pass a count up to 20"):
        Neurons.parse("21").resolve(20)
    with pytest.raises(OptionError, match=r"--neurons: 20, 25 out of range: .* has 20 \(0-19\)"):
        Neurons.parse("3,20,25").resolve(20)
    with pytest.raises(OptionError, match="positive count"):
        Neurons.parse("0")


def test_auto_threads_follow_omp_num_threads_then_the_free_cpus(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    for cpus, load, want in [(8, 0.1, 4), (8, 6.2, 2), (2, 7.0, 1), (2, 0.3, 2), (1, 0.0, 1), (16, 13.6, 2)]:
        monkeypatch.setattr(opts, "usable_cpus", lambda cpus=cpus: cpus)
        monkeypatch.setattr(opts.os, "getloadavg", lambda load=load: (load, load, load))
        n, why = auto_threads()
        assert n == want and f"{cpus} CPUs, load {load:.1f}" in why, (cpus, load, n)


def test_run_dir_with_a_run_needs_force_or_resume(tmp_path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    assert check_run_dir(str(run), False, False) == run  # new: fine
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert check_run_dir(str(run), False, False) == run  # a directory without a run: fine
    with pytest.raises(OptionError, match=r"--resume: .* holds no checkpoint .*: drop --resume"):
        check_run_dir(str(run), False, True)
    (run / "results.csv").write_text("x")
    with pytest.raises(OptionError, match=r"holds no checkpoint .*: pass --force to start it over"):
        check_run_dir(str(run), False, True)
    (run / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(OptionError) as e:
        check_run_dir(str(run), False, False)
    assert "already holds a run (checkpoint.pt, results.csv)" in str(e.value)
    assert "--resume to continue from its checkpoint, --force to overwrite it" in str(e.value)
    assert check_run_dir(str(run), True, False) == run and check_run_dir(str(run), False, True) == run
    assert clear_run_dir(run) == ["checkpoint.pt", "results.csv"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the sweep's own files go
    with pytest.raises(OptionError, match="is a file, not a run directory"):
        check_run_dir(str(run / "notes.txt"), True, False)


@pytest.mark.parametrize(
    "text, want",
    [
        ("image", Image()),
        ("Image", Image()),
        ("IMAGE()", Image()),
        ("Last()", Last()),
        ("non_pad", NonPad()),
        ("Image(0) | Last()", Image(0) | Last()),
        ("Image(1, patches_only=True) & ~Text()", Image(1, patches_only=True) & ~Text()),
        ("First(4, of=Image())", First(4, of=Image())),
        ("LastN(2, of=text)", LastN(2, of=Text())),
        ("After(Image())", After(Image())),
        ("[3, 5]", Positions([3, 5])),
        ("-1", Positions(-1)),
        ("Rows(range(0, 2))", Rows(range(0, 2))),
        ("Frame((0, 2)) & Video(0)", Frame((0, 2)) & Video(0)),
        ("AudioTime(0.5, 1.0)", AudioTime(0.5, 1.0)),
    ],
)
def test_positions_by_the_library_names(text: str, want: object) -> None:
    assert parse_selector(text) == want


def test_every_named_selector_reads_back_from_its_repr() -> None:
    sels = [Image(0, tile=1), Video(1), Frame(2), AudioTime(0.0, 2.5), Text(), NonPad(), Last(), After(Image())]
    sels += [Positions([1, -2]), Rows([0, 2]), First(3, of=Image()), LastN(2), (Image() | Last()) & ~Text()]
    assert {type(s).__name__ for s in sels} | {"Union", "Intersection", "Not"} >= set(SELECTORS) - {
        "Audio",
        "Special",
        "Instruction",
        "Answer",
        "System",
        "Generated",
    }
    for s in sels:
        assert parse_selector(repr(s)) == s, repr(s)


@pytest.mark.parametrize(
    "text, says",
    [
        ("Image(", "not an expression ('(' was never closed)"),
        ("imgae", "unknown selector 'imgae': use one of After, "),
        ("Where(lambda L: L.grid_row == 0)", "Where(...) takes a Python function"),
        ("__import__('os').system('true')", "is not allowed here"),
        ("open('x')", "unknown selector 'open'"),
        ("Image().mask", "is not allowed here"),
        ("Image(-1)", "Image: Image(i=-1): give a non-negative int index"),
        ("Image(0, bad=1)", "unexpected keyword argument 'bad'"),
        ("1 + 2", "'1 + 2' is not allowed here"),
        ("'text'", "\"'text'\" is not a selector"),
        ("Image(**{})", "**kwargs are not supported"),
    ],
)
def test_bad_positions_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(OptionError) as e:
        parse_selector(text)
    assert str(e.value).startswith(f"--positions {text!r}: ") and says in str(e.value)


def test_metric_names_are_the_sweep_metric_factories() -> None:
    from hooks_mm.sweep import metrics

    factories = {
        n
        for n, f in vars(metrics).items()
        if inspect.isfunction(f)
        and f.__module__ == metrics.__name__
        and list(inspect.signature(f).parameters)[:2] == ["model", "inputs"]
    }
    assert set(METRICS) == factories
    assert metric_name("kl_to_clean") == "kl_to_clean" and metric_name("logit_diff(correct=1, wrong=2)") == "logit_diff"
    with pytest.raises(OptionError, match=r"--metric 'answer_logprb': unknown metric 'answer_logprb': use one of"):
        metric_name("answer_logprb")
    with pytest.raises(OptionError, match=r"unknown metric 'metrics.kl_to_clean'"):
        metric_name("metrics.kl_to_clean()")


def test_default_model_is_the_zoo_default() -> None:
    from hooks_mm.zoo import DEFAULT_MODEL

    assert opts.DEFAULT_MODEL == DEFAULT_MODEL


BAD = [
    (["sweep", "--layers", "0", "tiny-llava"], "argument --layers: 'tiny-llava': not an index", "MODEL goes before"),
    (["sweep", "--layers", "3-1"], "argument --layers: '3-1': the range 3-1 runs backwards", ""),
    (["sweep", "--neurons", "x"], "argument --neurons: 'x': not an index or a range", ""),
    (["sweep", "--neurons", "0"], "argument --neurons: 0: give a positive count", ""),
    (["sweep", "--threads", "0"], "argument --threads: '0': give a thread count from 1 to", "or auto"),
    (["sweep", "--threads", "100000"], "argument --threads: '100000': give a thread count from 1 to", ""),
    (["sweep", "--threads", "two"], "argument --threads: 'two'", ""),
    (["sweep", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'", "bfloat16"),
    (["sweep", "--force", "--resume"], "argument --resume: not allowed with argument --force", ""),
    (["sweep", "--metric", "foo"], "--metric 'foo': unknown metric 'foo': use one of answer_logprob", ""),
    (["sweep", "--positions", "Image("], "--positions 'Image(': not an expression", ""),
    (["sweep", "--positions", "imgae"], "unknown selector 'imgae'", ""),
    (["sweep", "--device", "gpu"], "--device 'gpu' is not a torch device", "use cpu, cuda"),
    (["sweep", "--device", "meta"], "--device meta holds no weights", ""),
    (["sweep", "--remote", "http://x", "--device", "cpu"], "--device with --remote", "drop --device"),
    (["sweep", "--n-examples", "0"], "--n-examples: give a positive number", ""),
    (["sweep", "--resume"], "--resume: RUN holds no checkpoint", "drop --resume"),
    (["demo", "--positions", "Where(1)"], "Where(...) takes a Python function", ""),
    (["inspect", "--threads", "-1"], "argument --threads: '-1'", ""),
    (["report", "/nonexistent/run"], "run directory /nonexistent/run does not exist", "pass the directory"),
    (["report", ".", "--top", "0"], "--top 0: give a positive number", ""),
]


@pytest.mark.parametrize("argv, says, fix", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_each_bad_value_is_one_line_before_any_model_loads(argv, says, fix, tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from hooks_mm.model import HookedMLLM

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the model loaded before the option was checked")

    monkeypatch.setattr(HookedMLLM, "from_pretrained", never)
    monkeypatch.setattr(HookedMLLM, "from_config", never)
    run = tmp_path / "run"
    argv = argv + (["--out", str(run)] if argv[0] == "sweep" else [])
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.replace(str(run), "RUN")
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hooks-mm {argv[0]}: error: ") and says in last and fix in last, err
    assert "Traceback" not in err and err.strip().splitlines()[0].startswith("usage: hooks-mm")


def test_a_cuda_device_this_torch_lacks_is_refused(monkeypatch, capsys) -> None:  # noqa: ANN001
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--device", "cuda:0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda:0: this torch" in err and "sees no cuda device: pass --device cpu" in err
