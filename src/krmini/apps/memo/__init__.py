"""`krmini memo`: your own notes plus an LLM.

    readers.py  notes on disk (.md .txt .pdf .docx, JSONL {id, title, text}) → text with line numbers
    chunks.py   text → chunks by headings and paragraphs (file, heading path, line range)
    units.py    Korean-aware search units: character bigrams (always), Kiwi morphemes (optional)
    store.py    the one SQLite file: files, chunks, terms and postings; checked on open
    indexer.py  incremental indexing by content hash, per-file status, --watch
    embed.py    embedders (st: sentence-transformers, openai: /v1/embeddings) and the reranker
    vectors.py  one vector per chunk in the same file, embedded incrementally; brute-force dense ranking
    search.py   lexical (BM25 inside SQLite), dense and hybrid search, fusion, coverage, citations
    evaluate.py `krmini memo eval`: recall@k and MRR on a question set
    backends.py a run directory (our engine) or an OpenAI-compatible server: context, count, stream
    ask.py      retrieve → a prompt that fits the model's context → streamed answer with [n] citations;
                summaries; /memo for the chat REPL
    server.py   `krmini serve RUN --memo DB`: /v1/memo/search, /v1/memo/chat, /v1/memo/note (server_schema.py:
                their models; files.py: a cited note read back, never a file outside the indexed folders)
    cli.py      the `krmini memo …` commands (index, status, search, eval, ask, summarize, chat) and `serve --memo`
    bench.py    `krmini bench memo`
"""
