"""The yardstick of `diffdeck bench frame`: the smallest Textual app of the workbench's kind, a
header, a text area and a footer, whose first frame is what Textual itself costs here."""

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, TextArea


class MinimalApp(App):
    def compose(self) -> ComposeResult:
        yield Header()
        yield TextArea()
        yield Footer()


if __name__ == "__main__":
    MinimalApp().run()
