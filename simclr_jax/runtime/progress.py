"""Progress of a long loop, readable both in a terminal and in a batch job's log file.

On a terminal (stdout is a TTY) a tqdm bar is drawn on stderr. When stdout is redirected
(nohup, SLURM, `> log`), a bar would only ever print its first frame, so instead one plain
line is printed to stdout every `every` units and once at the end:

  [train] step 120/1240 (9.7%) loss 3.1234 views/s 812 ETA 0:12:31

The ETA uses the rate of the last interval, leaving out time the caller excludes (the
first step's compilation, an online evaluation).
"""
import datetime
import sys
import time
from typing import Any, Optional, TextIO


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    if value != value:  # NaN
      return "nan"
    magnitude = abs(value)
    if magnitude >= 100:
      return f"{value:.0f}"
    if magnitude >= 1 or magnitude == 0:
      return f"{value:.4f}"
    return f"{value:.4g}"
  return str(value)


def format_duration(seconds: float) -> str:
  """Seconds as H:MM:SS."""
  return str(datetime.timedelta(seconds=max(0, int(round(seconds)))))


class Progress:
  """A tqdm bar on a terminal, else one log line every `every` units.

  Args:
    total: units in the whole loop (steps, batches, images).
    desc: prefix of every line, e.g. 'train'.
    unit: name of one unit, e.g. 'step'.
    every: units between two log lines when not on a terminal (>= 1).
    initial: units already done (a resumed run).
    stream: where log lines go (default sys.stdout); a TTY stream selects the bar.
    enabled: False prints nothing (e.g. processes other than 0).
  """

  def __init__(self, total: int, *, desc: str, unit: str = "step", every: int = 1,
               initial: int = 0, stream: Optional[TextIO] = None, enabled: bool = True):
    self.total = int(total)
    self.count = int(initial)
    self._desc, self._unit, self._every = desc, unit, max(1, int(every))
    self._stream = stream if stream is not None else sys.stdout
    self._enabled = enabled
    self._bar = None
    self._fields: dict = {}
    self._once: dict = {}
    self._start = time.perf_counter()
    self._start_count = self.count
    self._interval_start, self._interval_count = self._start, self.count
    self._last_line_count = None
    if enabled and getattr(self._stream, "isatty", lambda: False)():
      from tqdm import tqdm
      self._bar = tqdm(total=self.total, initial=self.count, unit=unit, desc=desc,
                       dynamic_ncols=True, file=sys.stderr)

  @property
  def interactive(self) -> bool:
    """True when a bar is drawn (a terminal), False when lines are logged."""
    return self._bar is not None

  def update(self, n: int = 1, once: Optional[dict] = None, **fields: Any) -> None:
    """Advances by `n` units; `fields` (e.g. loss=...) are shown from now on, `once` (e.g. a
    figure measured every few hundred steps) on the next line only."""
    if not self._enabled:
      self.count += n
      return
    self.count += n
    self._fields.update(fields)
    if self._bar is not None:
      self._fields.update(once or {})   # a live bar shows the latest value of each
      self._bar.update(n)
      if fields or once:
        self._bar.set_postfix({k: _format_value(v) for k, v in self._fields.items()},
                              refresh=False)
      return
    self._once.update(once or {})
    if self.count % self._every == 0 or (
        self.count // self._every != (self.count - n) // self._every):
      self._log_line()

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` spent on other work (an evaluation) out of the rate and the ETA."""
    self._interval_start += max(0.0, float(seconds))

  def restart_interval(self, pending: int = 0) -> None:
    """The rate counts from now (e.g. after a slow first step), leaving out `pending`
    units that finished already but are not yet passed to `update`."""
    self._interval_start = time.perf_counter()
    self._interval_count = self.count + int(pending)

  def _rate(self) -> Optional[float]:
    now = time.perf_counter()
    done = self.count - self._interval_count
    elapsed = now - self._interval_start
    self._interval_start, self._interval_count = now, self.count
    return done / elapsed if done > 0 and elapsed > 0 else None

  def _line(self, rate: Optional[float]) -> str:
    percent = f" ({100.0 * self.count / self.total:.1f}%)" if self.total > 0 else ""
    parts = [f"[{self._desc}] {self._unit} {self.count}/{self.total}{percent}"]
    parts += [f"{name} {_format_value(value)}"
              for name, value in {**self._fields, **self._once}.items()]
    if rate is not None and self.count < self.total:
      parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
    return " ".join(parts)

  def _log_line(self) -> None:
    print(self._line(self._rate()), file=self._stream, flush=True)
    self._last_line_count = self.count
    self._once = {}

  def close(self, summary: Optional[str] = None) -> None:
    """Ends the bar, or logs the last line if it was not logged yet, then `summary`."""
    if not self._enabled:
      return
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._last_line_count != self.count and self.count > self._start_count:
      self._log_line()
    if summary:
      print(f"[{self._desc}] {summary}", file=self._stream, flush=True)

  def elapsed(self) -> float:
    """Seconds since the progress started."""
    return time.perf_counter() - self._start
