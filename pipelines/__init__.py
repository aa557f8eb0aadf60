"""Ray Data job definitions, built only from the library's public functions.

Jobs: `video_inference`, `point_inference`, `tokenize`; each has `run(input, output, ...)` and
returns a `JobSummary`. They share `job.run_job` (resume, exactly-once accounting, shards,
progress bar, summary) and `inputs.list_inputs` (directory, glob or CSV/JSONL/Parquet manifest).
From the shell: `spatiotemporal pipeline <job> --input ... --output ...` or
`spatiotemporal pipeline run configs/pipelines/<job>.yaml key=value ...`.
"""
