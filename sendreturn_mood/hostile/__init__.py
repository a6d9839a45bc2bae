"""The project's own hostile-client suite: attack a real `serve` the way an independent client would.

    python -m sendreturn_mood.hostile fuzz --cases 10000     # Hypothesis-driven protocol fuzzer
    python -m sendreturn_mood.hostile soak --rooms 50 --minutes 10
    python -m sendreturn_mood.hostile uploads                # every bad POST /v1/analyze, each with its status
    python -m sendreturn_mood.hostile cluster --minutes 5    # 2-3 processes + Redis behind proxies, random faults

Both start a real server process (`python -m sendreturn_mood serve`) unless given --url, keep a well-behaved room
streaming beside the attack (it must miss no update), and check the server's log for tracebacks. The fuzzer needs
`hypothesis` (the `dev` extra). Figures and commands: docs/RELIABILITY.md.
"""
