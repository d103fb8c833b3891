"""New instructions from an OpenAI-compatible endpoint: Self-Instruct, Evol-Instruct, backtranslation.

    knowlm serve --model artifacts/demo/merged &     # or any OpenAI-compatible server (base_url, model)
    python jobs/generate_instructions.py --config jobs/configs/tiny_generate.yaml [key.path=value ...]
    python jobs/generate_instructions.py --config jobs/configs/tiny_generate.yaml generator=evol_instruct \\
        out_dir=artifacts/demo/evolved

Writes out_dir/generated.jsonl (alpaca records with their provenance, appended as answers arrive;
the curation job reads it), out_dir/tasks.jsonl (one line per finished task), quarantine.jsonl and
manifest.json; see knowlm_ray.curate.generate. Re-running the same command continues where the
last run stopped (failed tasks are asked again) and writes each record once. The API key: api_key,
else the variable api_key_env names (OPENAI_API_KEY; KNOWLM_API_KEY for a keyed knowlm serve).
"""

from __future__ import annotations

from knowlm_ray.entry import run_job


def main(argv: list[str] | None = None):
    return run_job("generate-instructions", argv, description=__doc__)  # knowlm_ray/entry.py: JOBS


if __name__ == "__main__":
    main()
