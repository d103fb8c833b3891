"""Knowledge extraction: schema-driven NER / RE / EE on top of the generation engine.

    parsers   tolerant readers of model answers (tuple / JSON, prose, truncation, full-width, NAN)
    schema    accepted schema shapes; labels outside the schema dropped and reported
    offsets   character offsets of extracted spans in the text
    prompts   instruction text (kg2instruct's templates), IEPile schema batches, text chunks
    extract   extract_record / extract_many / handle_extract: the /extract path, any generate_fn
    scorer    micro and per-type P/R/F1 (`knowlm ie-score`)
    batch     corpus-scale extraction on Ray Data (jobs/batch_extract.py)
    evaluate  extraction scores on gold records and perplexity on shards (jobs/evaluate.py)
    cli       the `knowlm ie-score` and `knowlm extract` subcommands

Nothing is imported here, so ``knowlm_ray.instruct`` and this package can import each other's
modules freely.
"""
