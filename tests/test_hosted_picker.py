"""The workbench's model picker names who renders a hosted model, learnt from the models file as it
starts: no model's files are looked up for it (a lookup per model held up the first frame)."""

from diffdeck.engines.core.registry import Registry, load_registry
from diffdeck.engines.record.session import Session
from diffdeck.tui.widgets.prompt_editor import PromptEditor
from helpers import until, write_models
from test_tui import SIZE, make_app


async def test_the_picker_says_which_models_are_hosted_and_only_the_first_model_is_looked_up(tmp_path, monkeypatch):
    models = write_models(tmp_path, {
        "ideo": {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY"},
        "local": {"source": "someone/some-model"}})
    looked_up, labels = [], {}
    files, show_models = Registry.files, PromptEditor.show_models
    monkeypatch.setattr(Registry, "files", lambda registry, name: looked_up.append(name) or files(registry, name))
    monkeypatch.setattr(PromptEditor, "show_models", lambda editor, shown: labels.update(shown) or show_models(editor, shown))
    monkeypatch.setattr("test_tui.load_registry", lambda _: load_registry(models))
    app = make_app(Session.open(tmp_path / "s"))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.board.telemetry is not None, timeout=30, what="the engine started")
        assert labels["ideo"] == "ideo · hosted by ideogram" and labels["local"] == "local"
        assert set(looked_up) == {app.first_model}, "the model shown, and no other"
