"""What both layouts' exports do per resolution bucket: the manifest's bucket table and progress labels.

The default bucket (the first of `--resolutions`, or `--height/--width`) is written where a one-bucket
folder has it (top-level `engines`, files at their usual paths); every other bucket's row carries its own
engine entries, whose files live below `buckets/<H>x<W>/` (artifacts/layouts.py `in_bucket`).
"""

from __future__ import annotations

from .engine_folder import Reporter


def bucket_label(patch: int, bucket: str | None) -> str | int:
    """A progress row's key: the size alone for the default bucket, else "P HxW" (shown as pP HxW)."""
    return patch if bucket is None else f"{patch} {bucket}"


class BucketReporter(Reporter):
    """The export's reporter, with every size of one bucket labelled by the bucket."""

    def __init__(self, inner: Reporter, bucket: str | None):
        self.inner, self.bucket = inner, bucket

    def stage(self, patch, text):
        self.inner.stage(bucket_label(patch, self.bucket), text)

    def done(self, patch, entry):
        self.inner.done(bucket_label(patch, self.bucket), entry)

    def warn(self, text):
        self.inner.warn(text)


def bucket_table(per_bucket: list[tuple]) -> list[dict]:
    """`buckets` rows from (request, entries[, I/O spec]) per bucket, the default first (its entries and I/O
    spec stay top-level; the others' I/O spec differs in the latent and prediction shapes)."""
    rows = []
    for index, (req, entries, *io) in enumerate(per_bucket):
        row = {"height": req.height, "width": req.width, "latent_shape": list(req.latent_shape),
               "tokens": {str(e["patch_size"]): e["tokens"] for e in entries if e["backend"] == "onnx"}}
        if index:
            row["io"] = io[0] if io else entries[0]["io"]
            row["engines"] = entries
        rows.append(row)
    return rows
