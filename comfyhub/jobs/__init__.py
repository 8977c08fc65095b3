"""批量生成: a workflow run over a table of parameters, item by item, durably.

| module      | holds                                                                 |
| ----------- | --------------------------------------------------------------------- |
| params.py   | tables (CSV, JSONL, JSON) and grids → validated items; `apply` (pure)  |
| store.py    | the `jobs` and `job_items` rows: create, claim, finish, counts         |
| runner.py   | feeding items to each project's ComfyUI, following them to the end    |

The runner runs in the backend process that holds the `jobs` lease. It keeps at most
COMFYHUB_JOB_QUEUE_DEPTH items of a project in ComfyUI's queue, writes each item's
`prompt_id` before submitting it, and learns the outcome from the generation records
(outputs/sync.py): so after any crash it can ask ComfyUI whether it has an item before
submitting it again.
"""
