"""The experiment's two cutoffs, derived from the data (or given) and checked."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from data_modules.contract.inputs import RawInputs
from data_modules.util.errors import DataError
from qanchor_pl.pipelines.experiment_config import ExperimentConfig


# -- time split ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeSplit:
    """Naive-UTC instants: data span, the two cutoffs, and the label window's end."""

    first_event: dt.datetime
    last_event: dt.datetime
    pretrain_cutoff: dt.datetime
    eval_cutoff: dt.datetime
    label_end: dt.datetime

    def describe(self) -> str:
        return (
            f"data {self.first_event:%Y-%m-%d %H:%M} .. {self.last_event:%Y-%m-%d %H:%M} (UTC); pretraining cutoff "
            f"{self.pretrain_cutoff.isoformat()} (D_future to {self.eval_cutoff.isoformat()}); evaluation cutoff "
            f"{self.eval_cutoff.isoformat()}, labels from {self.eval_cutoff.isoformat()} to {self.label_end.isoformat()}"
        )


def derive_split(cfg: ExperimentConfig, inputs: RawInputs | None = None) -> TimeSplit:
    """The two cutoffs from the data (or the overrides), checked: labels inside the data, the
    pretraining data's future window ending no later than the labels' start."""
    import polars as pl

    from data_modules.builder.cutoff import check_timezone, day_counts, default_cutoff, resolve_cutoff
    from data_modules.builder.events import scan_event_columns

    tz = check_timezone(cfg.timezone)
    if inputs is None:
        from data_modules.contract.inputs import read_inputs

        inputs = read_inputs(cfg.raw)
    events = scan_event_columns(list(inputs.events))  # the build checks every row; here only times
    first, last = (
        events.select(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")).collect().row(0)
    )
    window = dt.timedelta(days=cfg.future_days)
    ev_cut = (
        resolve_cutoff(cfg.eval_cutoff, tz)
        if cfg.eval_cutoff
        else default_cutoff(day_counts(events, tz), cfg.future_days, tz)[0]
    )
    pre_cut = resolve_cutoff(cfg.pretrain_cutoff, tz) if cfg.pretrain_cutoff else ev_cut - window
    where = "--eval-cutoff" if cfg.eval_cutoff else str(inputs.events[0].parent)
    if ev_cut + window > last + dt.timedelta(days=1):
        raise DataError(where, f"the label window {ev_cut} .. {ev_cut + window} goes beyond the data's last event {last}",
                        expected="an evaluation cutoff at least --future-days before the end of the data")  # fmt: skip
    if pre_cut + window > ev_cut:
        raise DataError("--pretrain-cutoff", f"{pre_cut} + {cfg.future_days} days passes the evaluation cutoff {ev_cut}: "
                        "pretraining answers would state the labels", expected=f"at most {ev_cut - window}")  # fmt: skip
    if pre_cut <= first:
        raise DataError(where, f"the pretraining cutoff {pre_cut} is not after the first event {first}: "
                        f"the data spans {(last - first).days} days, less than two label windows of {cfg.future_days} days",
                        expected="a longer log or a shorter --future-days")  # fmt: skip
    return TimeSplit(first, last, pre_cut, ev_cut, ev_cut + window)
