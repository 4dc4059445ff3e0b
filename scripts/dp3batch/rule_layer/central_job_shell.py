"""The central rule's shell command: this environment's Python runs `process_batch.py` on
the batch's specification file.

A shell command rather than Snakemake's `script:`, and the specification as an input file
rather than `params:`: Snakemake imports pandas and numpy to look at any rule's params (the
script's preamble, and the metadata it keeps of each job), 0.25-0.3 s of every run, with a
one-MS rerun's whole fixed cost at about 1.5 s.
"""

from __future__ import annotations

import shlex


def central_job_shell(python: str, script: str) -> str:
    """`python script SPECIFICATION MARKER LOG`, as Snakemake formats a shell command: the
    two paths quoted for the shell and their braces doubled (a path may hold any of them),
    the rest filled in from the job's input, output and log."""
    fixed = " ".join(
        shlex.quote(word).replace("{", "{{").replace("}", "}}") for word in (python, script)
    )
    return fixed + " {input.specification:q} {output.batch:q} {log:q}"
