"""F1: every key, with the binding id to remap it by in config.yaml."""

from __future__ import annotations

from diffdeck.engines.core.registry import user_config_dir
from diffdeck.tui.plain import plain
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="close_help")]
    AUTO_FOCUS = "#help-keys"  # scrolls at once

    def __init__(self, rows: list[tuple[str, str, str, str]]):
        """rows: (where, keys, what, binding id)."""
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        yield Static(plain(f"Keys — remap any by its id under keys: in {user_config_dir() / 'config.yaml'}"),
                     id="help-title")
        table = DataTable(cursor_type="row", id="help-keys")
        table.add_columns("where", "keys", "what", "id")
        table.add_rows([tuple(map(plain, row)) for row in self.rows])  # keys come from config.yaml
        yield table
