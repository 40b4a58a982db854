"""sluice_worker as a user meets it: serve() over in-memory streams, and real worker processes
(`python -m sluice_worker MODULE:FUNCTION` and a script calling serve) spoken to over pipes."""

import doctest
import io
import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sluice_worker
from sluice_worker import PROTOCOL_VERSION, serve

SRC = Path(__file__).resolve().parents[1] / "src"  # for the worker processes

USER_CODE = textwrap.dedent("""
    def shout(text):
        print("shouting", text)  # the user's own logging: must not reach the protocol
        if text == "boom":
            raise ValueError("bad number")
        if text == "set":
            return {1, 2}
        return text.upper()


    def echo(value):
        return value
    """)

SCRIPT = textwrap.dedent("""
    from sluice_worker import serve

    from user_code import shout

    if __name__ == "__main__":
        serve(shout)
    """)


class Invalid(Exception):
    pass


def run(fn, *messages):
    """Serve fn over StringIO streams; return the answers, decoded."""
    out = io.StringIO()
    serve(fn, stdin=io.StringIO("".join(json.dumps(m) + "\n" for m in messages)), stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def msg(input, id="m1"):
    return {"id": id, "input": input}


@pytest.fixture(autouse=True)
def protocol_env(monkeypatch):
    monkeypatch.setenv("SLUICE_EXEC_PROTOCOL", "1")


# --- serve() in-process ---------------------------------------------------------------------


def test_output_line_is_exactly_one_compact_json_line():
    out = io.StringIO()
    serve(lambda x: x * 2, stdin=io.StringIO('{"id": "a", "input": 21}\n'), stdout=out)
    assert out.getvalue() == '{"id":"a","output":42}\n'


def test_any_json_input_and_output():
    value = {"n": [1, 2.5, None, True], "s": "x"}
    assert run(lambda x: x, msg(value)) == [{"id": "m1", "output": value}]


def test_several_messages_answered_in_order_then_returns_at_eof():
    answers = run(len, *(msg("x" * i, id=f"id-{i}") for i in range(5)))
    assert answers == [{"id": f"id-{i}", "output": i} for i in range(5)]


def test_error_names_builtin_type_and_message():
    def parse(text):
        raise ValueError("bad number")

    assert run(parse, msg("x")) == [{"id": "m1", "error": "ValueError: bad number"}]


def test_error_names_module_and_class_for_other_types():
    def fail(_):
        raise Invalid("bad")

    assert run(fail, msg(1)) == [{"id": "m1", "error": f"{__name__}.Invalid: bad"}]


def test_error_without_message_is_just_the_type():
    def fail(_):
        raise RuntimeError()

    assert run(fail, msg(1)) == [{"id": "m1", "error": "RuntimeError"}]


def test_an_error_does_not_stop_the_worker(capsys):
    answers = run(lambda x: 10 // x, msg(0, id="a"), msg(5, id="b"))
    assert answers == [
        {"id": "a", "error": "ZeroDivisionError: integer division or modulo by zero"},
        {"id": "b", "output": 2},
    ]
    assert "Traceback" in capsys.readouterr().err  # logged for the runner's log


def test_print_goes_to_stderr_and_stdout_is_restored(capsys):
    def chatty(x):
        print("hello from the user")
        return x

    stdout_before = sys.stdout
    assert run(chatty, msg("v")) == [{"id": "m1", "output": "v"}]
    assert sys.stdout is stdout_before
    captured = capsys.readouterr()
    assert "hello from the user" in captured.err
    assert captured.out == ""


def test_non_serialisable_output_is_an_error():
    answers = run(lambda x: {1, 2}, msg(1, id="a"))
    assert answers == [
        {"id": "a", "error": "TypeError: Object of type set is not JSON serializable"}
    ]
    (nan,) = run(lambda x: float("nan"), msg(1))
    assert nan["error"].startswith("ValueError: Out of range float values")


def test_unicode_round_trip_with_ascii_only_answer():
    text = "héllo wörld ✓ 日本語 😀"
    out = io.StringIO()
    serve(
        lambda x: x, stdin=io.StringIO(json.dumps(msg(text), ensure_ascii=False) + "\n"), stdout=out
    )
    assert out.getvalue().isascii()
    assert json.loads(out.getvalue()) == {"id": "m1", "output": text}


def test_protocol_version_mismatch_exits_78(monkeypatch, capsys):
    monkeypatch.setenv("SLUICE_EXEC_PROTOCOL", "2")
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        serve(len, stdin=io.StringIO(json.dumps(msg("x")) + "\n"), stdout=out)
    assert exited.value.code == 78
    assert out.getvalue() == ""
    assert "SLUICE_EXEC_PROTOCOL='2'" in capsys.readouterr().err


def test_unset_protocol_variable_is_accepted(monkeypatch):
    monkeypatch.delenv("SLUICE_EXEC_PROTOCOL")
    assert run(len, msg("abc")) == [{"id": "m1", "output": 3}]


@pytest.mark.parametrize(
    "line",
    ["not json", "[1, 2]", '"text"', '{"id": 7, "input": 1}', '{"id": "a"}', '{"input": 1}', ""],
)
def test_malformed_line_exits_65_after_answering_what_came_before(line, capsys):
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        serve(len, stdin=io.StringIO(json.dumps(msg("ab")) + "\n" + line + "\n"), stdout=out)
    assert exited.value.code == 65
    assert out.getvalue() == '{"id":"m1","output":2}\n'
    assert "line 2 is not a protocol message" in capsys.readouterr().err


def test_keyboard_interrupt_exits_quietly():
    def interrupted(_):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run(interrupted, msg(1))
    assert exited.value.code == 130


def test_public_names_and_docstring_example():
    assert PROTOCOL_VERSION == 1
    assert sluice_worker.__version__ == "0.1.0"
    assert doctest.testmod(sluice_worker).failed == 0


# --- real worker processes over pipes -------------------------------------------------------


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "user_code.py").write_text(USER_CODE)
    (tmp_path / "worker.py").write_text(SCRIPT)
    return tmp_path


def start(workdir, *argv, protocol="1"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env["SLUICE_EXEC_PROTOCOL"] = protocol
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=workdir,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )


def ask(proc, message):
    """Send one line and read its answer before sending anything else, as the runner does."""
    proc.stdin.write(json.dumps(message, ensure_ascii=False) + "\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "no answer within 30 s: the worker did not flush its line"
    return json.loads(proc.stdout.readline())


WORKERS = {
    "module": ["-m", "sluice_worker", "user_code:shout"],
    "script": ["worker.py"],
}


@pytest.mark.parametrize("kind", WORKERS)
def test_worker_process_speaks_the_protocol(workdir, kind):
    with start(workdir, *WORKERS[kind]) as proc:  # closes the pipes and waits on the way out
        assert ask(proc, msg("hi", id="a")) == {"id": "a", "output": "HI"}
        assert ask(proc, msg("boom", id="b")) == {"id": "b", "error": "ValueError: bad number"}
        assert ask(proc, msg("set", id="c")) == {
            "id": "c",
            "error": "TypeError: Object of type set is not JSON serializable",
        }
        assert ask(proc, msg("ünï ✓ 😀", id="d")) == {"id": "d", "output": "ÜNÏ ✓ 😀"}
        proc.stdin.close()  # end of batch
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == ""  # the prints went to stderr only
        stderr = proc.stderr.read()
        assert "shouting hi" in stderr and "ValueError: bad number" in stderr


def test_many_messages_and_a_1mb_input_through_pipes(workdir):
    big = "x" * 1_000_000 + "é✓"
    messages = [msg(i, id=f"n{i}") for i in range(100)] + [msg(big, id="big")]
    proc = start(workdir, "-m", "sluice_worker", "user_code:echo")
    out, err = proc.communicate("".join(json.dumps(m) + "\n" for m in messages), timeout=60)
    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"id": m["id"], "output": m["input"]} for m in messages
    ]


def test_worker_process_clean_exit_at_eof_with_no_messages(workdir):
    proc = start(workdir, "-m", "sluice_worker", "user_code:shout")
    assert proc.communicate("", timeout=30) == ("", "")
    assert proc.returncode == 0


def test_worker_process_protocol_mismatch_exits_78(workdir):
    proc = start(workdir, "-m", "sluice_worker", "user_code:shout", protocol="2")
    out, err = proc.communicate(json.dumps(msg("hi")) + "\n", timeout=30)
    assert (proc.returncode, out) == (78, "")
    assert "protocol 1" in err and "Traceback" not in err


def test_worker_process_malformed_line_exits_65(workdir):
    proc = start(workdir, "worker.py")
    out, err = proc.communicate(json.dumps(msg("hi")) + "\nhello\n", timeout=30)
    assert (proc.returncode, out) == (65, '{"id":"m1","output":"HI"}\n')
    assert "line 2 is not a protocol message" in err and "Traceback" not in err


def test_worker_process_broken_pipe_exits_quietly(workdir):
    with start(workdir, "-m", "sluice_worker", "user_code:echo") as proc:
        proc.stdout.close()  # the reader is gone before the answer is written
        proc.stdin.write(json.dumps(msg("x")) + "\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 1
        assert proc.stderr.read() == ""


@pytest.mark.parametrize("target", ["", "user_code", "user_code:", "user_code:missing"])
def test_module_entry_point_rejects_bad_targets_with_64(workdir, target):
    proc = start(workdir, "-m", "sluice_worker", *([target] if target else []))
    _, err = proc.communicate("", timeout=30)
    assert proc.returncode == 64
    assert "usage: python -m sluice_worker MODULE:FUNCTION" in err
