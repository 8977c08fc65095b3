"""The data a project generates: generation records, output files, curation, export.

ComfyUI keeps its history in memory only; comfyhub copies it into its own tables
(`generations`, `outputs`) while an instance runs and once more before any stop, and
indexes files on disk that no history mentions. The files stay where ComfyUI wrote them.

| module       | holds                                                              |
| ------------ | ------------------------------------------------------------------ |
| graph.py     | what a graph says: prompt, seed, steps, cfg, sampler, model (pure) |
| history.py   | ComfyUI history entries → records to store (pure)                  |
| media.py     | a file's kind, content type, PNG text chunks and size              |
| store.py     | the only writer of `generations` and `outputs`; idempotent upserts |
| sync.py      | pulling /history and scanning output/ folders, on a schedule        |
| query.py     | the gallery's filters and pages                                    |
| files.py     | an output's path (never outside its folder), the trash             |
| thumbs.py    | thumbnails, made once and cached on disk                           |
| export.py    | the Hugging Face `imagefolder` export, streamed as a ZIP           |
"""
