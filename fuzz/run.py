"""Run every fuzz target (or some) for a number of inputs each; see scripts/fuzz.

Each target starts from its committed corpus in fuzz/corpus/<target>/ and writes what it
discovers to a scratch directory, so that a run never changes the repository; `--minimise`
instead merges the discoveries of the run into the committed corpus, keeping only inputs that
add coverage. A target that fails (a property broken, an exception other than HttpError, an
input taking longer than --timeout seconds) leaves the input in the scratch directory and
makes the run exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

FUZZ_DIR = pathlib.Path(__file__).resolve().parent
TARGETS = ('response_head', 'field_block', 'framing', 'chunked', 'target', 'request_headers')
DICTIONARY = FUZZ_DIR / 'http.dict'
_DONE_RE = re.compile(r'Done (\d+) runs in (\d+) second')


def libfuzzer_command(target: str, runs: Optional[int], timeout: int,
                      corpora: List[pathlib.Path], artifacts: pathlib.Path,
                      extra: List[str]) -> List[str]:
    return [
        sys.executable, str(FUZZ_DIR / ('fuzz_%s.py' % target)),
        *(['-runs=%d' % runs] if runs is not None else []),
        '-timeout=%d' % timeout, '-rss_limit_mb=2048',
        '-dict=%s' % DICTIONARY, '-artifact_prefix=%s/' % artifacts, '-print_final_stats=1',
        *extra, *map(str, corpora),
    ]


def run_target(target: str, runs: int, timeout: int, scratch: pathlib.Path,
               minimise: bool) -> Optional[int]:
    """Fuzz one target; the number of inputs run, or None if it failed."""
    committed = FUZZ_DIR / 'corpus' / target
    committed.mkdir(parents=True, exist_ok=True)
    found = scratch / target
    found.mkdir()
    log = scratch / ('%s.log' % target)
    started = time.monotonic()
    with log.open('w') as output:
        status = subprocess.call(
            libfuzzer_command(target, runs, timeout, [found, committed], scratch, []),
            stdout=output, stderr=subprocess.STDOUT, cwd=scratch)
    text = log.read_text(errors='replace')
    done = _DONE_RE.search(text)
    elapsed = time.monotonic() - started
    if status != 0 or done is None:
        print('%-16s FAILED (exit %d) after %.0fs; log and crashing input in %s'
              % (target, status, elapsed, scratch), flush=True)
        print('\n'.join(text.splitlines()[-40:]), flush=True)
        return None
    count = int(done[1])
    print('%-16s %10d inputs in %6.0fs (%6.0f/s), corpus %d committed + %d new'
          % (target, count, elapsed, count / max(elapsed, 1e-9),
             len(list(committed.iterdir())), len(list(found.iterdir()))), flush=True)
    if minimise:
        merge_into_committed(target, timeout, scratch, committed, found)
    return count


def merge_into_committed(target: str, timeout: int, scratch: pathlib.Path,
                         committed: pathlib.Path, found: pathlib.Path) -> None:
    # libFuzzer's merge keeps the smallest set of inputs that covers what the union covers
    merged = scratch / ('%s-merged' % target)
    merged.mkdir()
    wrapper = scratch / ('fuzz_%s' % target)
    wrapper.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n'
                       % (sys.executable, FUZZ_DIR / ('fuzz_%s.py' % target)))
    wrapper.chmod(0o755)
    subprocess.check_call(
        libfuzzer_command(target, None, timeout, [merged, committed, found], scratch,
                          ['-merge=1', '-max_len=1024']),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=scratch,
        env={**os.environ, 'LOWHAIO_FUZZ_SELF': str(wrapper)})
    shutil.rmtree(committed)
    shutil.copytree(merged, committed)
    print('%-16s corpus minimised to %d files' % (target, len(list(committed.iterdir()))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=20000, help='inputs per target')
    parser.add_argument('--timeout', type=int, default=10,
                        help='seconds one input may take before it counts as a hang')
    parser.add_argument('--target', action='append', choices=TARGETS,
                        help='a target to run (repeatable); all by default')
    parser.add_argument('--minimise', action='store_true',
                        help='merge what this run found into fuzz/corpus/, minimised')
    parser.add_argument('--keep', action='store_true', help='keep the scratch directory')
    parser.add_argument('--allow-known-defects', action='store_true',
                        help='do not stop at defects already reported (see each target)')
    arguments = parser.parse_args()
    if arguments.allow_known_defects:
        os.environ['LOWHAIO_FUZZ_ALLOW_KNOWN_DEFECTS'] = '1'
    scratch = pathlib.Path(tempfile.mkdtemp(prefix='lowhaio-fuzz-'))
    total, failed = 0, []
    for target in arguments.target or TARGETS:
        count = run_target(target, arguments.runs, arguments.timeout, scratch,
                           arguments.minimise)
        if count is None:
            failed.append(target)
        else:
            total += count
    print('total: %d inputs, %d target(s) failed%s' % (
        total, len(failed), (': ' + ', '.join(failed)) if failed else ''))
    if failed or arguments.keep:
        print('scratch directory kept: %s' % (scratch,))
    else:
        shutil.rmtree(scratch)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
