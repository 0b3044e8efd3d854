"""Routes: an intent (preview, final, typography, ...) mapped to a flow or a model, as `routes:` in
models.yaml writes it, and the rules that pick one from the prompt.

    preview: {flow: demo-preview}
    typography: {model: sdxl, steps: 40, when: {quoted: true}}
    final: {model: imagen, max_cost_usd: 0.10}   # over 10 cents a job: the preview route

A rule (`when:`) holds when every condition it gives holds: `keywords` (any of the words, as whole
words, in any case), `regex` (searched in the prompt), `quoted` (the prompt has text in double
quotes, as lettering is written). `--route auto` takes the first route whose rule holds, else
`final`. Pure data: no files, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.flows import loras_from
from diffdeck.engines.core.spec import JobSpec, parse_size
from diffdeck.engines.core.validation import SpecError, check, is_cost

AUTO = "auto"
FALLBACK = "final"  # what `auto` routes to when no rule holds
CHEAP = "preview"  # what a cost cap falls back to
JOB_FIELDS = ("steps", "guidance", "scheduler", "width", "height", "negative_prompt", "loras")
_QUOTED = re.compile(r'"[^"\n]+"|“[^”\n]+”')


@dataclass(frozen=True)
class Rule:
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    quoted: bool = False

    def reason(self, prompt: str) -> str | None:
        """Why the rule holds for `prompt`, in words; None when it does not."""
        said = []
        if self.keywords:
            found = next((w for w in self.keywords if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", prompt, re.I)), None)
            if found is None:
                return None
            said.append(f"the prompt has the keyword {found!r}")
        if self.regex is not None:
            match = re.search(self.regex, prompt)
            if match is None:
                return None
            said.append(f"the prompt matches /{self.regex}/ at {match[0]!r}")
        if self.quoted:
            match = _QUOTED.search(prompt)
            if match is None:
                return None
            said.append(f"the prompt has quoted text {match[0]}")
        return " and ".join(said) or None

    def describe(self) -> str:
        return " and ".join(([f"keywords {', '.join(self.keywords)}"] if self.keywords else [])
                            + ([f"regex /{self.regex}/"] if self.regex else []) + (["quoted text"] if self.quoted else []))

    @classmethod
    def from_entry(cls, data: Any, where: str) -> "Rule":
        check(isinstance(data, dict) and data, where, "expected a mapping of keywords: [...], regex: \"...\", quoted: true")
        unknown = sorted(set(data) - {"keywords", "regex", "quoted"})
        check(not unknown, f"{where}.{unknown[0] if unknown else ''}", "is not a rule; rules are keywords, regex, quoted")
        keywords = data.get("keywords") or []
        keywords = [keywords] if isinstance(keywords, str) else keywords
        check(isinstance(keywords, list) and all(isinstance(w, str) and w.strip() for w in keywords),
              f"{where}.keywords", "must be a list of words")
        regex = data.get("regex")
        if regex is not None:
            check(isinstance(regex, str), f"{where}.regex", "must be a regular expression, quoted")
            try:
                re.compile(regex)
            except re.error as e:
                raise SpecError(f"{where}.regex", f"{regex!r} is not a regular expression: {e}") from None
        quoted = data.get("quoted", False)
        check(isinstance(quoted, bool), f"{where}.quoted", "must be true or false, unquoted")
        return cls(tuple(w.strip() for w in keywords), regex, quoted)


@dataclass(frozen=True)
class Route:
    """Where an intent renders: a flow, a model, or a model's stages of a flow, with job fields
    the job leaves open (steps, size, ...)."""

    name: str
    flow: str | None = None
    model: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    when: Rule | None = None
    origin: str = "built in"  # where it is written: "built in", a file, a model's roles
    max_cost_usd: float | None = None  # over this estimate a job takes the cheap route

    def target(self) -> str:
        parts = ([f"flow {self.flow}"] if self.flow else []) + ([f"model {self.model}"] if self.model else [])
        given = ", ".join([f"{k} {v}" for k, v in self.fields.items() if k != "loras"]
                          + ([f"at most {usd(self.max_cost_usd)}"] if self.max_cost_usd is not None else []))
        return " on ".join(parts) + (f" ({given})" if given else "") + f" [{self.origin}]"

    @classmethod
    def from_entry(cls, name: str, data: Any, origin: str) -> "Route":
        where = f"routes.{name}"
        check(name != AUTO, where, f"{AUTO!r} is reserved: it picks a route by the rules")
        check(isinstance(data, dict), where, "expected a mapping such as {flow: NAME} or {model: NAME}")
        known = {"flow", "model", "when", "size", "max_cost_usd", *JOB_FIELDS}
        unknown = sorted(set(data) - known)
        check(not unknown, f"{where}.{unknown[0] if unknown else ''}", f"is not a route key; keys are {', '.join(sorted(known))}")
        check(bool(data.get("flow") or data.get("model")), where, "names no flow and no model; give flow: or model:")
        fields = {k: v for k, v in data.items() if k in JOB_FIELDS}
        if "size" in data:
            fields["width"], fields["height"] = parse_size(data["size"])
        if "loras" in fields:
            fields["loras"] = loras_from(fields["loras"])
        try:
            JobSpec(prompt="check", **fields).validate()
        except SpecError as e:
            raise SpecError(f"{where}.{e.field}", e.message) from None
        when = Rule.from_entry(data["when"], f"{where}.when") if data.get("when") is not None else None
        cap = data.get("max_cost_usd")
        check(cap is None or is_cost(cap), f"{where}.max_cost_usd",
              f"must be a number of US dollars, 0 or more, got {cap!r}")
        return cls(name, _opt(data.get("flow")), _opt(data.get("model")), fields, when, origin,
                   None if cap is None else float(cap))


def choose_route(prompt: str, routes: dict[str, Route], asked: str) -> tuple[str, str]:
    """The route a job asked for (a name, or `auto`), and why it was chosen, in words."""
    if asked != AUTO:
        check(asked in routes, "route", f"unknown route {asked!r}; routes: {', '.join([AUTO, *routes])}")
        return asked, f"route {asked}, as asked"
    for name, route in routes.items():
        why = route.when.reason(prompt) if route.when else None
        if why:
            return name, f"route {name}, by its rule: {why}"
    return FALLBACK, f"route {FALLBACK}: no route's rule holds for the prompt"


def capped(name: str, why: str, cost: float | None, cap: float,
           say: Callable[[float], str] = lambda seconds: f"{seconds:.3g} s") -> tuple[str, str]:
    """A cost cap (seconds; or dollars, `say` being usd): the cheap route when the chosen one's
    estimate is over it, or not known (a hosted model without a price)."""
    if name == CHEAP or (cost is not None and cost <= cap):
        return name, f"{why}; estimate {'not known' if cost is None else say(cost)}, cap {say(cap)}"
    if cost is None:
        return CHEAP, f"{why}, but its cost is not known and the cost cap is {say(cap)}: route {CHEAP}"
    return CHEAP, f"{why}, but its estimate of {say(cost)} is over the cost cap of {say(cap)}: route {CHEAP}"


def role_routes(models: dict[str, Any]) -> dict[str, Route]:
    """A route per role label of the models (`roles: [final]`): the first model with it."""
    routes: dict[str, Route] = {}
    for model in models.values():
        for role in model.roles:
            if role != AUTO and role not in routes:
                routes[role] = Route(role, model=model.name, origin=f"role of model {model.name}")
    return routes


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
