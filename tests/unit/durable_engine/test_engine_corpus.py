"""The corpus of recorded order-saga histories replays on today's code, without
infrastructure; a change to the order saga that breaks one of them fails here, with the
replay report (the same one ``cloudmart replay`` prints before a deploy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from record_corpus import CORPUS, SCENARIOS, V2, place_order_changed
from test_engine_history_compat import RECORDED, events_of
from typer.testing import CliRunner

from cloudmart.cli import app
from cloudmart.replay import from_files, render, replay_all
from engine.replay import history_file
from orchestration_pattern.orchestrator import WORKFLOWS

FILES = sorted(CORPUS.glob("*.json"))


def test_the_corpus_holds_every_scenario() -> None:
    assert sorted(f.stem for f in FILES) == sorted(SCENARIOS)


async def test_every_recorded_history_replays_as_matching_on_todays_workflows() -> None:
    results = await replay_all(WORKFLOWS, from_files(FILES))
    assert all(r.matching for r in results), render(results)
    assert len(results) == len(SCENARIOS)


async def test_histories_recorded_before_the_steps_were_typed_still_match(tmp_path: Path) -> None:
    files = []
    for saga in RECORDED:
        path = tmp_path / f"{saga}.json"
        path.write_text(json.dumps(history_file(saga, events_of(saga)), default=str))
        files.append(path)
    results = await replay_all(WORKFLOWS, from_files(files))
    assert all(r.matching for r in results), render(results)


async def test_a_workflow_change_that_breaks_recorded_histories_is_reported() -> None:
    results = await replay_all([place_order_changed], from_files(FILES))
    report = render(results)
    diverged = [r for r in results if not r.matching]
    # Every place_order history reached reserve_stock, which the change no longer asks for.
    assert len(diverged) == len(SCENARIOS)
    assert "at position 1 the workflow asked for step payment.process_payment" in report
    assert "history holds StepScheduled inventory.reserve_stock" in report


def test_cloudmart_replay_gates_a_deploy_on_history_files(tmp_path: Path) -> None:
    runner = CliRunner()
    matching = runner.invoke(app, ["replay", *map(str, FILES)])
    assert matching.exit_code == 0, matching.output
    assert f"{len(FILES)} replayed, {len(FILES)} matching, 0 diverged" in matching.output

    edited = tmp_path / "edited.json"
    shutil.copy(CORPUS / "completed.json", edited)
    data = json.loads(edited.read_text())
    for event in data["events"]:  # history says payment was taken for another amount
        if event["step"] == "payment.process_payment" and event["type"] == "StepScheduled":
            event["payload"]["input"]["amount"] = "1.00"
            event["payload"]["digest"] = "0" * 16
    edited.write_text(json.dumps(data))
    diverged = runner.invoke(app, ["replay", str(edited), "--json"])
    assert diverged.exit_code == 1
    (result,) = json.loads(diverged.output)
    assert not result["matching"]
    assert "amount: history '1.00', code" in result["divergence"]


def test_cloudmart_replay_against_the_order_sagas_v1_refuses_to_roll_back_under_v2_sagas() -> None:
    # CLOUDMART_WORKFLOWS names the code replayed against, as it names what an orchestrator
    # runs: a rollback to v1 would strand the screened sagas, and the gate says so.
    runner = CliRunner()
    v1 = {"CLOUDMART_WORKFLOWS": "order_saga_v1"}
    older = [str(f) for f in FILES if f.stem not in V2]
    assert runner.invoke(app, ["replay", *older], env=v1).exit_code == 0
    screened = [str(CORPUS / f"{name}.json") for name in V2]
    refused = runner.invoke(app, ["replay", *screened], env=v1)
    assert refused.exit_code == 1, refused.output
    assert refused.output.count("history holds MarkerRecorded patch:fraud-check") == len(V2)
    assert f"{len(V2)} replayed, 0 matching, {len(V2)} diverged" in refused.output


def test_cloudmart_replay_lint_names_each_call_replay_cannot_repeat_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    clean = runner.invoke(app, ["replay", "--lint"])
    assert (clean.exit_code, clean.output.strip()) == (0, "0 call(s) that replay cannot repeat")

    # A helper the body calls: @workflow reads only the body, so it imports; the lint reads
    # the whole module.
    (tmp_path / "stamped_workflows.py").write_text(
        "import random, time\n"
        "from engine import workflow\n"
        "def stamp(data):\n"
        "    data['at'] = time.time()\n"
        "    data['lucky'] = random.random()\n"
        "@workflow\n"
        "async def stamped(ctx, data):\n"
        "    stamp(data)\n"
        "    return data\n"
        "WORKFLOWS = (stamped,)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = runner.invoke(
        app, ["replay", "--lint"], env={"CLOUDMART_WORKFLOWS": "stamped_workflows"}
    )
    assert found.exit_code == 1, found.output
    source = tmp_path / "stamped_workflows.py"
    assert (
        f"{source}:4: stamp calls time.time(); a workflow must be deterministic: use ctx.now()"
        in found.output
    )
    assert f"{source}:5: stamp calls random.random()" in found.output
    assert "2 call(s) that replay cannot repeat" in found.output

    # A body that calls one is refused when its module is loaded, as the orchestrator would.
    (tmp_path / "impure_workflows.py").write_text(
        "import time\n"
        "from engine import workflow\n"
        "@workflow\n"
        "async def impure(ctx, data):\n"
        "    return {'at': time.time()}\n"
        "WORKFLOWS = (impure,)\n"
    )
    refused = runner.invoke(
        app, ["replay", "--lint"], env={"CLOUDMART_WORKFLOWS": "impure_workflows"}
    )
    assert refused.exit_code == 1
    assert f"calls time.time() at {tmp_path / 'impure_workflows.py'}:5" in refused.output
