"""Frontier: a small turn-based economy-and-raids game between two bots. Part of the harness.

Each turn both players earn gold (a base income plus their workers, with a random swing),
spend it on workers, soldiers and walls according to their config, then may raid the other
base with part of their army. A raid is fought in rounds of dice rolls: attackers retreat
when too few of them are left, defenders get a bonus per wall, and attackers who beat the
defence damage the base. A player whose base falls loses; after MAX_TURNS the higher score
(base + army + workers) wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_TURNS = 60
BASE_HP = 100
BASE_INCOME = 4  # gold per turn without workers
WORKER_INCOME = 2  # gold per worker per turn
COST = {"worker": 10, "soldier": 7, "wall": 12}
MAX_WALLS = 8
WALL_BONUS = 0.05  # added to the defenders' hit chance per wall
HIT = 0.5  # base hit chance of one soldier per battle round
RAID_DAMAGE = 4  # base damage per attacker that gets through
MAX_ROUNDS = 8

# name -> (low, high): the keys of ai_config.json and their allowed ranges
PARAMS = {
    "economy": (0.0, 1.0),  # share of spending that goes to workers
    "military": (0.0, 1.0),  # share that goes to soldiers
    "defense": (0.0, 1.0),  # share that goes to walls
    "max_workers": (0, 30),  # no more workers beyond this
    "aggression": (0.0, 1.0),  # fraction of the army sent on a raid
    "attack_ratio": (0.1, 10.0),  # raid only when the raid party outnumbers the defenders by this
    "retreat_threshold": (0.0, 1.0),  # attackers retreat when this fraction of the party is left
    "min_army": (0, 100),  # never raid with fewer soldiers than this
}


@dataclass
class Player:
    cfg: dict[str, float]
    gold: float = 0.0
    workers: int = 2
    soldiers: int = 4
    walls: int = 0
    hp: float = BASE_HP
    spent_workers: float = 0.0
    spent_soldiers: float = 0.0
    spent_walls: float = 0.0

    def score(self) -> float:
        return self.hp + 2 * self.soldiers + self.workers


def spend(p: Player) -> None:
    """Buy what is most below its configured share of the spending, while gold allows."""
    shares = {"worker": p.cfg["economy"], "soldier": p.cfg["military"], "wall": p.cfg["defense"]}
    total_share = sum(shares.values()) or 1.0
    while True:
        spent = {"worker": p.spent_workers, "soldier": p.spent_soldiers, "wall": p.spent_walls}
        total = sum(spent.values()) + 1.0
        options = [
            k
            for k in ("worker", "soldier", "wall")
            if shares[k] > 0
            and p.gold >= COST[k]
            and not (k == "worker" and p.workers >= p.cfg["max_workers"])
            and not (k == "wall" and p.walls >= MAX_WALLS)
        ]
        if not options:
            return
        pick = max(options, key=lambda k: shares[k] / total_share - spent[k] / total)
        p.gold -= COST[pick]
        if pick == "worker":
            p.workers += 1
            p.spent_workers += COST[pick]
        elif pick == "soldier":
            p.soldiers += 1
            p.spent_soldiers += COST[pick]
        else:
            p.walls += 1
            p.spent_walls += COST[pick]


def battle(att: int, dfn: int, walls: int, retreat: float, rng: random.Random) -> tuple[int, int]:
    """Fight a raid; returns (attackers left, defenders left)."""
    start = att
    # Weather and morale: each side's hit chance swings from one battle to the next.
    a_hit = HIT * rng.uniform(0.6, 1.4)
    d_hit = (HIT + WALL_BONUS * walls) * rng.uniform(0.6, 1.4)
    for _ in range(MAX_ROUNDS):
        if att == 0 or dfn == 0 or att < retreat * start:
            break
        a_hits = sum(rng.random() < a_hit for _ in range(att))
        d_hits = sum(rng.random() < d_hit for _ in range(dfn))
        att, dfn = max(0, att - d_hits), max(0, dfn - a_hits)
    return att, dfn


def raid(a: Player, d: Player, rng: random.Random) -> None:
    party = int(a.soldiers * a.cfg["aggression"])
    scouted = d.soldiers * rng.uniform(0.6, 1.4)  # scouting reports are rough
    if party < max(1, a.cfg["min_army"]) or party < a.cfg["attack_ratio"] * scouted:
        return
    left, d.soldiers = battle(party, d.soldiers, d.walls, a.cfg["retreat_threshold"], rng)
    a.soldiers -= party - left
    if d.soldiers == 0 and left > 0:
        d.hp -= RAID_DAMAGE * left
        d.workers = max(0, d.workers - left // 4)  # a raid that gets through also kills workers


def play(cfg_a: dict[str, float], cfg_b: dict[str, float], seed: int) -> float:
    """One match; returns 1.0 if A wins, 0.5 for a draw, 0.0 if B wins."""
    rng = random.Random(seed)
    a, b = Player(cfg_a), Player(cfg_b)
    for turn in range(MAX_TURNS):
        for p in (a, b):
            p.gold += (BASE_INCOME + WORKER_INCOME * p.workers) * rng.uniform(0.5, 1.5)
            spend(p)
        # Who raids first alternates, so neither side has a fixed first-move advantage.
        first, second = (a, b) if turn % 2 == 0 else (b, a)
        raid(first, second, rng)
        raid(second, first, rng)
        if a.hp <= 0 or b.hp <= 0:
            break
    if a.hp <= 0 < b.hp:
        return 0.0
    if b.hp <= 0 < a.hp:
        return 1.0
    sa, sb = a.score(), b.score()
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5
