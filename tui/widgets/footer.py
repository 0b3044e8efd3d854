"""Textual's Footer, composing its keys again only when they change."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer as TextualFooter


class Footer(TextualFooter):
    """Textual's Footer composes its keys again each time the screen says its bindings may
    have changed, which one change of focus says up to three times: on a screen's start, the
    first frame with keys waited for three compositions of the same keys. This one composes
    again only when the keys it would show are not those it shows."""

    _shown: tuple[bool, tuple[tuple[Binding, bool, str], ...]] | None = None

    def compose(self) -> ComposeResult:
        if self.screen.focused is not None:  # the keys are known already: drawn in the first frame it is in
            self.set_reactive(TextualFooter._bindings_ready, True)
        if self._bindings_ready:
            self._shown = self._keys()
        yield from super().compose()

    async def recompose(self) -> None:
        if not self.is_attached:  # its screen closed since (Textual's recompose does nothing then)
            return
        if self._keys() != self._shown:
            await super().recompose()

    def _keys(self) -> tuple[bool, tuple[tuple[Binding, bool, str], ...]]:
        """What the keys are drawn from: every active binding as compose reads it."""
        bindings = tuple((binding, enabled, tooltip) for _node, binding, enabled, tooltip
                         in self.screen.active_bindings.values())
        return self.show_command_palette, bindings
