"""The Lambda edge: event sources in, envelopes out.

- `fair_runners.edge.lambda_app.lambda_handler`: the runner function (template.yaml names it through the
  thin `handler/app.py`): `POST /run`, `POST /runs`, `GET /runs/{run_id}`, Map batches, direct invokes.
- `fair_runners.edge.merge.merge_handler`: the merge step of a large run (`handler/merge.py`).

Nothing is imported here, so the merge function loads neither runner.
"""
