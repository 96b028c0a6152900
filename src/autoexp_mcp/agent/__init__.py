"""`autoexp-mcp agent`: a built-in agent without a language model, for targets that hold
numbers (JSON, YAML, TOML, `key = value`). It drives a server over MCP like any client, so
its runs are a baseline a model agent can be compared with on the same budget.

    numbers.py    the numbers of a target's text, changed in place
    yamlish.py    the YAML subset it reads and edits
    strategy.py   the strategy file: search, seed, step, keys, bounds …
    search.py     coordinate and random moves (pure)
    driver.py     the MCP client loop that follows `next`
"""

from .driver import Agent, AgentError, AgentReport, Reply, drive, reading, serve_params
from .numbers import Number, find_numbers, format_of, replace
from .search import Move, Search
from .strategy import Strategy, load_strategy

__all__ = [
    "Agent",
    "AgentError",
    "AgentReport",
    "Move",
    "Number",
    "Reply",
    "Search",
    "Strategy",
    "drive",
    "find_numbers",
    "format_of",
    "load_strategy",
    "reading",
    "replace",
    "serve_params",
]
