"""The mix's rules, each written once: a stage's share table (``mix``, or ``ar_ratio`` when it is
empty), the stages (``data.stages``), their sources and their token budget. :func:`mix_stages` is
what both :func:`allam.config.rules.validate` and the data blend call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from allam.config.checks import fail as _fail, positive as _positive, unit as _unit
from allam.config.errors import ConfigError
from allam.config.langs import BASE_LANG, lang_name, language
from allam.config.schema import SourceKind


@dataclass(frozen=True)
class Stage:
    """One stage of the mix, checked: its token budget (None: to the end), each language's share
    of its tokens (in split order, summing to 1), the translated share of each target language's
    tokens (None: by size); `key` prefixes its error messages."""

    tokens: Optional[int]
    shares: tuple[tuple[str, float], ...]
    translated_share: Optional[float]
    key: str

    def __post_init__(self):
        if isinstance(self.shares, (int, float)):  # Stage(tokens, ar_ratio, ...): Arabic and English
            object.__setattr__(self, "shares", (("ar", float(self.shares)), (BASE_LANG, 1.0 - float(self.shares))))

    @property
    def ar_ratio(self) -> float:
        """The Arabic share (0 when Arabic is not in the mix)."""
        return dict(self.shares).get("ar", 0.0)

    def langs(self) -> list[str]:
        return [code for code, _ in self.shares]


SHARE_SUM_TOL = 1e-6
DEFAULT_AR_RATIO = 0.45  # the paper's Arabic share: an unset ar_ratio's value when no mix table is given


def _shares(mix, ar_ratio: Optional[float], key: str) -> tuple[tuple[str, float], ...]:
    """A stage's shares from its ``mix`` table, or ``{ar: ar_ratio, en: the rest}`` when the
    table is empty, in a fixed order whatever the table's (the targets by code, then English), so
    the blend depends on the shares alone."""
    if not mix:
        ar_ratio = DEFAULT_AR_RATIO if ar_ratio is None else ar_ratio
        _unit(f"{key}.ar_ratio", ar_ratio)
        return (("ar", float(ar_ratio)), (BASE_LANG, 1.0 - float(ar_ratio)))
    if ar_ratio is not None:
        _fail(f"{key}.ar_ratio", ar_ratio, f"applies only when {key}.mix is empty; with {key}.mix set the "
              f"Arabic share is {key}.mix.ar ({key}.ar_ratio=null clears this one, e.g. an experiment's)")
    entries = [(str(code), share) for code, share in mix.items()]
    for code, share in entries:
        language(code, f"{key}.mix")  # data.mix=xx: unknown language code
        _unit(f"{key}.mix.{code}", share)
    rest = [code for code, share in entries if share is None]
    if len(rest) > 1:
        _fail(f"{key}.mix", _table(entries), f"{', '.join(rest)} are null; at most one language takes the rest")
    given = sum(float(share) for _, share in entries if share is not None)
    out = [(code, float(share)) for code, share in entries if share is not None]
    if rest:
        if given > 1 + SHARE_SUM_TOL:
            _fail(f"{key}.mix", _table(entries), f"the given shares sum to {given:.6g}, above 1, leaving "
                  f"nothing for {rest[0]}")
        out.append((rest[0], max(0.0, 1.0 - given)))
    elif abs(given - 1.0) > SHARE_SUM_TOL:
        _fail(f"{key}.mix", _table(entries), f"the shares sum to {given:.6g}; they must sum to 1 (or set one "
              "language to null: it takes the rest)")
    return tuple(sorted(out, key=lambda cs: (cs[0] == BASE_LANG, cs[0])))


def _table(entries) -> str:
    return "{" + ",".join(f"{c}:{'null' if v is None else v}" for c, v in entries) + "}"


def mix_stages(data) -> list[Stage]:
    """The stages of ``data`` (one stage from ``mix``/``ar_ratio``/``translated_share`` when
    ``data.stages`` is empty), after checking every mix rule:

    - shares are fractions summing to 1 (or one null takes the rest); codes are known languages;
      ``ar_ratio`` is left alone when a ``mix`` table is given, and ``data.ar_ratio``,
      ``data.translated_share`` and ``data.mix`` when ``data.stages`` are (each stage has its own);
    - only the last stage may leave ``tokens`` unset; tokens are positive;
    - a language with a share above 0 has a source to draw from, and every source's language has
      a share in every stage;
    - a stage that fixes ``translated_share`` has translated (natural) sources of each target
      language it draws from.

    Source existence is checked when ``data.sources`` is not empty (plan needs no sources).
    """
    raw = list(data.stages or [])
    if raw and data.get("mix"):
        _fail("data.mix", _table(list(data.mix.items())), "applies only when data.stages is empty; with stages set "
              "each stage's share table, data.stages.<i>.mix (data.mix=null clears this one, e.g. a preset's)")
    if raw and data.get("ar_ratio") is not None:
        _fail("data.ar_ratio", data.ar_ratio, "applies only when data.stages is empty; with stages set each stage's "
              "data.stages.<i>.ar_ratio (or data.stages.<i>.mix) gives its Arabic share (data.ar_ratio=null clears "
              "this one, e.g. an experiment's)")
    if raw and data.get("translated_share") is not None:
        _fail("data.translated_share", data.translated_share, "applies only when data.stages is empty; with stages "
              "set each stage's data.stages.<i>.translated_share")
    if not raw:
        stages = [Stage(None, _shares(data.get("mix"), data.get("ar_ratio"), "data"), _opt(data.translated_share), "data")]
    else:
        stages = [Stage(st.tokens, _shares(st.get("mix"), st.get("ar_ratio"), f"data.stages.{i}"), _opt(st.translated_share),
                        f"data.stages.{i}") for i, st in enumerate(raw)]
    names = list(data.sources)
    sources = [data.sources[name] for name in names]
    kinds: dict[str, set[str]] = {}
    for s in sources:
        kinds.setdefault(str(s["lang"]), set()).add(str(s.get("kind", SourceKind.natural)))
    for i, st in enumerate(stages):
        _unit(f"{st.key}.translated_share", st.translated_share)
        if st.tokens is None and i != len(stages) - 1:
            _fail(f"{st.key}.tokens", None, "only the last stage may leave tokens unset")
        _positive(f"{st.key}.tokens", st.tokens)
        if not sources:
            continue
        shares = dict(st.shares)
        from_ratio = not (raw[i].get("mix") if raw else data.get("mix"))
        for name, s in zip(names, sources):
            code = str(s["lang"])
            if code not in shares:
                how = (f"add {st.key}.mix.{code}=<share> (or remove the source)" if not from_ratio else
                       f"{st.key}.mix is empty (Arabic and English from {st.key}.ar_ratio); give a table with a share "
                       f"for it, e.g. {'+' if st.key == 'data' else ''}{st.key}.mix="
                       f"{{ar:{st.ar_ratio:g},{code}:0.1,en:null}} (or remove the source)")
                _fail(f"data.sources.{name}.lang", s["lang"], f"{st.key}.mix gives {lang_name(code)} no share; {how}")
        for code, share in st.shares:
            if code not in kinds and share > 0:
                if from_ratio:
                    side = "above 0" if code == "ar" else "below 1"
                    _fail(f"{st.key}.ar_ratio", st.ar_ratio, f"is {side} but data.sources has no {lang_name(code)} source")
                _fail(f"{st.key}.mix.{code}", share, f"is above 0 but data.sources has no {lang_name(code)} source")
        tau = st.translated_share
        if tau is None:
            continue
        for code, share in st.shares:
            if code == BASE_LANG or share <= 0 or code not in kinds:
                continue
            if tau > 0 and SourceKind.translated not in kinds[code]:
                _fail(f"{st.key}.translated_share", tau, f"is above 0 but no {lang_name(code)} source has kind=translated")
            if tau < 1 and SourceKind.natural not in kinds[code]:
                _fail(f"{st.key}.translated_share", tau, f"is below 1 but every {lang_name(code)} source has kind=translated")
    return stages


def mix_languages(data) -> list[str]:
    """Every language of the mix in split order (the first stage's order, then any later stage's
    new ones), then the languages of sources the mix does not name."""
    out: dict[str, None] = {}
    for st in mix_stages(data):
        out.update(dict.fromkeys(st.langs()))
    out.update(dict.fromkeys(str(data.sources[n]["lang"]) for n in data.sources))
    return list(out)


def mix_targets(data) -> list[str]:
    """The target languages (every language but English) with a share above 0 in some stage, in
    split order (the expanded vocabulary's new pieces come from every target with a source,
    whatever its share: allam.tasks.builders.tokenizer_targets)."""
    out: dict[str, None] = {}
    for st in mix_stages(data):
        out.update(dict.fromkeys(code for code, share in st.shares if share > 0 and code != BASE_LANG))
    return list(out)


def stage_budget(stages: list[Stage], data, model, trainer) -> None:
    """The stages cover the training budget: every stage starts before training ends, and a last
    stage that sets ``tokens`` (instead of null: to the end) reaches the budget. The budget is
    ``trainer.max_tokens``, or ``trainer.max_steps`` x tokens per step when max_steps is set."""
    from allam.config.derived import tokens_per_step, total_steps

    if len(stages) == 1 and stages[0].tokens is None:
        return
    if trainer.max_steps:
        budget = int(trainer.max_steps) * tokens_per_step(data, model, trainer)
        what = f"trainer.max_steps={trainer.max_steps} x {tokens_per_step(data, model, trainer):,} tokens per step"
    else:
        budget, what = int(trainer.max_tokens), "trainer.max_tokens"
    # the blend starts a stage at the first whole block at or after its token: at ceil(start / seq_len)
    seq = int(model.seq_len)
    blocks = total_steps(data, model, trainer) * tokens_per_step(data, model, trainer) // seq
    start = 0
    for st in stages:
        if -(-start // seq) >= blocks:
            raise ConfigError(f"{st.key}: starts at token {start:,} (block {-(-start // seq):,} of {seq:,} tokens) but "
                              f"training ends at block {blocks:,} ({budget:,} tokens, {what}), so it would never run; "
                              "shorten the earlier stages, drop this one or raise the budget")
        start += st.tokens or 0
    last = stages[-1]
    if last.tokens is not None and start < budget:
        _fail(f"{last.key}.tokens", last.tokens,
              f"the stages cover {start:,} of the run's {budget:,} training tokens ({what}); set the last "
              "stage's tokens to null (it then runs to the end of training) or make the stages sum to the budget")


def _opt(v) -> Optional[float]:
    return None if v is None else float(v)

