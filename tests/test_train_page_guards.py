"""The Train page against a careless or hostile browser (issue 22), headless (AppTest): the server re-checks
every permission and value on the action itself (a forged click or number is refused, as Streamlit 1.40 let
them through), user text is shown as text, a browser keeps its jobs across a reload, passphrase guesses are
slowed server-wide, and a locked jobs database costs a message, not the app."""

from __future__ import annotations

import time

import pytest
import streamlit
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from resattn import jobs

from .test_jobs_records import _Lock
from .test_train_page import APP, train_env, train_page, unlock_button  # noqa: F401 - the fixture

import ui.job_access as job_access  # noqa: E402 - importable once test_train_page put app/ on the path


@pytest.fixture
def forged(monkeypatch):
    """What a forged websocket message makes a widget return (Streamlit 1.40 passed such values through): a
    click on a disabled button, a number outside the widget's range. Maps widget keys to the values returned."""
    values: dict[str, object] = {}
    for owner, name in ((DeltaGenerator, "button"), (DeltaGenerator, "number_input"), (streamlit, "button")):
        real = getattr(owner, name)

        def wrapper(*args, _real=real, **kwargs):
            result = _real(*args, **kwargs)
            return values.get(kwargs.get("key"), result)

        monkeypatch.setattr(owner, name, wrapper)
    return values


def _submit_queued(env, owner: str, **kw) -> jobs.Job:
    return jobs.JobManager(env, max_running=0).submit(["--data", "tiny", "--epochs", "1"], owner=owner, **kw)


def test_a_forged_click_cannot_cancel_another_browsers_job(train_env, monkeypatch, forged):
    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")
    other = _submit_queued(train_env, "browser:someone-else")
    forged[f"train_cancel_{other.id}"] = True  # clicked, though the page shows the button disabled
    at = train_page()
    assert not at.exception, [e.value for e in at.exception]
    assert jobs.JobManager(train_env, max_running=0).get(other.id).state == "queued"


def test_forged_numbers_are_refused_at_submit_naming_the_option(train_env, monkeypatch, forged):
    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")
    at = train_page()
    for key, value, option in (("train_epochs", 1e9, "--epochs"), ("train_lr", float("nan"), "--lr"),
                               ("train_batch", 0, "--batch-size"), ("train_limit", 10**9, "--train-limit")):
        forged.clear()
        forged[key] = value
        at.button(key="train_start").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("Not started" in e.value and option.replace("-", "\\-") in e.value for e in at.error), (
            option, [e.value for e in at.error])
    assert jobs.JobManager(train_env, max_running=0).list() == []


def test_user_text_is_shown_as_text_in_every_browsers_caption(train_env, monkeypatch):
    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")
    hostile = "**bold** [link](x) :red[alarm] <b>x</b>"
    job = _submit_queued(train_env, "cli", label=hostile)  # a label that is not made from an upload's name
    at = train_page()
    caption = next(c.value for c in at.caption if "device **" in c.value)
    assert caption.startswith(job_access.plain(hostile) + " · ")
    assert "**bold**" not in caption and ":red[" not in caption and "](x)" not in caption and "<b>" not in caption
    assert job.id == 1


def test_plain_escapes_what_markdown_would_act_on():
    assert job_access.plain("**a** _b_ `c` [d](e) :red[f] $g$ <h> #i") == (
        "\\*\\*a\\*\\* \\_b\\_ \\`c\\` \\[d\\]\\(e\\) \\:red\\[f\\] \\$g\\$ "
        "\\<h\\> \\#i")
    assert job_access.plain("plain words") == "plain words"


def test_an_upload_name_is_reduced_to_a_safe_file_name_at_submit():
    assert jobs.safe_file_name("**bold** [link](x) :red[alarm].zip") == "_bold_ _link_x_ _red_alarm_.zip"
    assert jobs.safe_file_name("../../etc/passwd") == "passwd" and jobs.safe_file_name("C:\\x\\a.zip") == "a.zip"
    assert jobs.safe_file_name("") == jobs.safe_file_name("...") == "upload.zip"
    long = jobs.safe_file_name("n" * 200 + ".zip")
    assert len(long) == 80 and long.endswith(".zip")


def test_a_reload_keeps_a_browsers_jobs_and_its_right_to_cancel_them(train_env, monkeypatch):
    monkeypatch.setenv("RESATTN_JOBS_MAX_RUNNING", "0")
    monkeypatch.setenv("RESATTN_JOBS_MAX_QUEUED", "2")
    first = train_page()  # a first visit: no cookie yet, so the page sets one
    scripts = [h.proto.body for h in first.get("html")]
    token = next(b.split(f"{job_access.COOKIE}=")[1].split(";")[0] for b in scripts if job_access.COOKIE in b)
    first.button(key="train_start").click().run()
    first.button(key="train_start").click().run()
    assert any("Queued job 2" in s.value for s in first.success)
    monkeypatch.setattr(job_access, "cookie_token", lambda: token)  # the reload sends the cookie back
    again = train_page()
    assert not any(job_access.COOKIE in h.proto.body for h in again.get("html"))  # kept, not set again
    assert again.dataframe[0].value["by"].tolist() == ["you", "you"]
    assert not again.button(key="train_cancel_2").disabled
    again.button(key="train_start").click().run()  # the quota did not reset: 2 of 2 held
    assert any("already has 2 queued or running job(s); the limit is 2 per browser" in e.value for e in again.error)
    again.button(key="train_cancel_2").click().run()
    assert jobs.JobManager(train_env, max_running=0).get(2).state == "cancelled"
    monkeypatch.setattr(job_access, "cookie_token", lambda: "another-browser-token-0123456789")
    stranger = train_page()
    assert stranger.dataframe[0].value["by"].tolist() == ["another browser", "another browser"]
    stranger.selectbox(key="train_job").set_value(1).run()
    assert stranger.button(key="train_cancel_1").disabled


def test_passphrase_guesses_are_slowed_for_the_whole_server(train_env, monkeypatch):
    monkeypatch.setenv("RESATTN_JOBS_PASSPHRASE", "open sesame")
    monkeypatch.setenv("RESATTN_JOBS_GUESS_DELAY", "1.5")
    job_access.throttle.clear()
    guesser, other = train_page(), train_page()  # two sessions: the delay is the server's, not a session's
    guesser.text_input(key="jobs_passphrase_input").input("wrong")
    unlock_button(guesser).click().run()
    other.text_input(key="jobs_passphrase_input").input("open sesame")
    unlock_button(other).click().run()  # right, but too soon after a wrong guess: not even compared
    assert other.button(key="train_start").disabled and any("Too soon" in e.value for e in other.error)
    time.sleep(1.6)
    unlock_button(other).click().run()
    assert not other.button(key="train_start").disabled


def test_the_throttle_checks_again_exactly_when_the_delay_is_over():
    now = [100.0]
    gate = job_access.GuessThrottle(2.0, clock=lambda: now[0])
    assert gate.check("wrong", "right") == ("wrong", 2.0)
    now[0] = 101.999
    assert gate.check("right", "right")[0] == "too soon"  # 1 ms early: refused unchecked
    assert gate.next_check == 102.0  # and the early try did not extend the wait
    now[0] = 102.0
    assert gate.check("right", "right") == ("right", 0.0)  # exactly at the delay: checked
    assert gate.check("right", "right") == ("right", 0.0)  # right guesses cost no wait
    assert gate.check("wrong", "right") == ("wrong", 2.0) and gate.check("wrong", "right")[0] == "too soon"


def test_a_locked_database_costs_the_train_page_a_message_and_other_pages_nothing(train_env, monkeypatch):
    jobs.JobManager(train_env, max_running=0)  # the database exists
    monkeypatch.setenv(jobs.store.ENV_DB_TIMEOUT, "60")
    lock = _Lock(train_env)
    try:
        started = time.monotonic()
        explore = AppTest.from_file(str(APP / "main.py"), default_timeout=300)
        explore.run()  # the Explore page and its model picker: they never open the jobs database
        assert not explore.exception, [e.value for e in explore.exception]
        assert time.monotonic() - started < 45
        monkeypatch.setenv(jobs.store.ENV_DB_TIMEOUT, "0.2")
        explore.switch_page("views/train.py").run()
        assert not explore.exception, [e.value for e in explore.exception]
        assert any("is locked by another process" in e.value for e in explore.error), [e.value for e in explore.error]
    finally:
        lock.release()
