"""Generate a question-style QA benchmark over long multi-session chats between named people (DESIGN.md format).

    python benchmarks/make_people_qa.py [--seed 11] [--out benchmarks/data/people_qa.json]

Written by the MemOS project and released under CC0 (public domain); deterministic for a given seed.

Each conversation is a long chat between two people over 14-20 dated sessions of 14-30 turns. Unlike
``make_synthetic.py`` (short chats, a few fixed event scripts) the turns here are longer and chattier, the other
speaker often *echoes* the facts back ("A pottery class with Eli? So sweet!"), and both speakers have families,
hobbies, belongings and plans with their own names, so most words of a question occur in many turns. Queries are
short questions that name people, things and dates, in the categories of public long-conversation benchmarks:

* ``single-hop``: one fact in one turn ("What colour is Iris's kayak?");
* ``temporal``: when something happened; the turn carries a relative date ("last Saturday") resolved against
  the session date, or an explicit one;
* ``update``: the current value of a fact that changed (the old value stays as a distractor);
* ``multi-hop``: two facts in different sessions must be joined ("Where does the person who gave Iris a
  painting live?");
* ``open-domain``: an inference from a stated habit or trait ("Would Iris enjoy a weekend of hiking?");
* ``adversarial``: the question attributes one speaker's fact to the other speaker (the evidence is the turn
  where the *right* person said it; the gold answer says the premise is wrong);
* ``unanswerable``: nothing in the chat answers it (no evidence; retrieval benchmarks skip these, QA
  benchmarks expect an abstention).

Every query carries a gold ``answer`` string (``null`` only for ``unanswerable``).
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

PAIRS = [("Iris", "Mateo"), ("Yusuf", "Clara"), ("Beatriz", "Kwame"), ("Hana", "Dmitri"), ("Lucia", "Arjun"),
         ("Freya", "Tariq"), ("Noor", "Gabriel"), ("Ines", "Kofi")]
KIN = [("son", "his"), ("daughter", "her"), ("nephew", "his"), ("niece", "her"), ("mom", "her"), ("dad", "his"),
       ("grandma", "her"), ("brother", "his"), ("sister", "her")]
KIN_NAMES = ["Eli", "Rosa", "Theo", "Mila", "Jonas", "Amara", "Otis", "Lena", "Ravi", "Zoe", "Felipe", "Ada",
             "Bruno", "Wren", "Silas", "Nell"]
ACTIVITIES = [("pottery workshop", "made a lopsided bowl"), ("climbing gym", "got to the top of the orange route"),
              ("planetarium show", "learned about black holes"), ("farmers market", "bought a huge pumpkin"),
              ("jazz concert in the park", "danced the whole time"), ("aquarium", "saw the octopus feeding"),
              ("cooking class", "made fresh gnocchi"), ("kite festival", "lost our kite in a tree"),
              ("science museum", "built a tiny robot"), ("strawberry picking farm", "ate more than we picked")]
THINGS = [("kayak", ["yellow", "teal", "red", "orange"]), ("bike", ["green", "silver", "black", "blue"]),
          ("sofa", ["mustard", "grey", "navy", "emerald"]), ("tent", ["orange", "olive", "blue", "red"]),
          ("guitar", ["sunburst", "black", "white", "cherry red"]), ("scooter", ["mint", "white", "pink", "black"])]
HOBBIES = [("painting watercolours", "I've been painting watercolours every evening, mostly birds and lakes.",
            "art supplies"),
           ("rock climbing", "I've been bouldering at the climbing wall three times a week.", "the outdoors"),
           ("baking bread", "I've been baking sourdough every weekend, my starter is called Bubbles.", "cooking"),
           ("birdwatching", "I got into birdwatching, I spotted a kingfisher by the river this morning.", "nature"),
           ("chess", "I've been playing chess online every night, my rating finally passed 1500.", "strategy games"),
           ("gardening", "I turned the backyard into a vegetable garden, the tomatoes are coming in.", "plants"),
           ("learning Japanese", "I've been studying Japanese with flashcards before work.", "languages"),
           ("woodworking", "I built a bookshelf out of oak in the garage last month.", "making things")]
OPEN = {"painting watercolours": ("Would {who} like a gift card for an art store?", "Yes, {who} paints watercolours."),
        "rock climbing": ("Would {who} enjoy a weekend trip to the mountains?", "Likely yes, {who} climbs a lot."),
        "baking bread": ("Would {who} appreciate a new Dutch oven?", "Yes, {who} bakes sourdough every weekend."),
        "birdwatching": ("Would {who} want a pair of binoculars?", "Yes, {who} has taken up birdwatching."),
        "chess": ("Would {who} enjoy a board game night?", "Probably, {who} plays chess every night."),
        "gardening": ("Would {who} like seeds for the backyard?", "Yes, {who} keeps a vegetable garden."),
        "learning Japanese": ("Is {who} likely to visit Japan someday?", "Likely, {who} is studying Japanese."),
        "woodworking": ("Would {who} use a new set of chisels?", "Yes, {who} does woodworking in the garage.")}
BANDS = ["The Paper Kites", "Khruangbin", "Fleetwood Mac", "Bon Iver", "Tame Impala", "Haim", "Radiohead",
         "Vampire Weekend"]
CITIES = ["Valencia", "Ghent", "Bergen", "Porto", "Krakow", "Graz", "Split", "Lyon", "Trieste", "Aarhus"]
GIFTS = ["a painting of the harbour", "a handmade quilt", "a vintage record player", "a signed cookbook",
         "a bonsai tree", "a knitted scarf"]
CARS = ["a hatchback", "a camper van", "a pickup truck", "a hybrid sedan"]
JOBS = ["physiotherapist", "librarian", "architect", "pharmacist", "sound engineer", "vet nurse", "translator",
        "baker"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

CHATTER = [
    ("How's everything on your end? Work still crazy?", "Work is work, you know how it goes. The kids keep me busy too."),
    ("I feel like this week lasted a month.", "Right? I had so many things going on with family and work."),
    ("Did you end up doing anything fun last weekend?", "Not really, just stayed home and caught up on sleep."),
    ("I've been thinking about what you said last time.", "Oh yeah? I hope it helped a bit."),
    ("The weather finally turned nice here.", "Lucky you, it's still grey and cold where I am."),
    ("I made way too much coffee this morning.", "Is there such a thing as too much coffee?"),
    ("My phone has been acting up all week.", "Ugh, have you tried turning it off and on again?"),
    ("I need a vacation from my vacation.", "Ha, I know that feeling too well."),
    ("Family stuff has been a lot lately.", "Family is complicated. I'm here if you want to talk."),
    ("I keep meaning to call you more often.", "Same! Life just gets in the way."),
    ("What are you up to this weekend?", "Probably nothing exciting, maybe some chores and a walk."),
    ("I tried a new recipe last night and it was fine, nothing special.", "Fine is better than burnt!"),
]
ECHOES = ["No way! {X}? That's amazing.", "Wait, {x}? Tell me more!", "{X}, wow. I love that for you.",
          "Oh, {x}! You have to send me photos.", "Haha, {x}. Of course you did."]
REACT = ["That's so cool.", "I'm really happy to hear that.", "Oh wow.", "That sounds like a lot.", "Love it!",
         "Honestly, same.", "You deserve it.", "Oof, that's rough."]
OPENERS = [("Hey {o}! Long time no see.", "Hi {o}! I missed our chats."),
           ("Good morning {o}! How did you sleep?", "Morning! Not bad, you?"),
           ("Hi {o}, do you have a minute to catch up?", "Always! What's going on?"),
           ("{o}! Guess what happened this week.", "Oh no, what now? Tell me.")]
CLOSERS = [("I should go, dinner is almost ready.", "Okay, talk soon {o}!"),
           ("Alright, I have to run. Bye {o}!", "Bye! Take care."),
           ("Let's talk again next week, okay?", "Deal. Have a good one, {o}.")]


def _d(d: datetime) -> str:
    return f"{d.day} {d:%B} {d.year}"


class Conv:
    def __init__(self, rng: random.Random, a: str, b: str, start: datetime) -> None:
        self.rng, self.a, self.b = rng, a, b
        self.sessions: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.cur: list[dict[str, Any]] = []
        self.date = start

    def other(self, who: str) -> str:
        return self.b if who == self.a else self.a

    def say(self, who: str, text: str) -> str:
        tid = f"D{len(self.sessions) + 1}:{len(self.cur) + 1}"
        self.cur.append({"id": tid, "speaker": who, "text": text})
        return tid

    def ask(self, text: str, category: str, evidence: list[str], answer: str | None) -> None:
        self.queries.append({"id": f"q{len(self.queries) + 1}", "text": text, "evidence": evidence,
                             "category": category, "answer": answer})

    def echo(self, who: str, x: str) -> None:
        self.say(who, self.rng.choice(ECHOES).format(x=x, X=x[:1].upper() + x[1:]))

    def chatter(self, n: int) -> None:
        for _ in range(n):
            first = self.rng.choice([self.a, self.b])
            q, r = self.rng.choice(CHATTER)
            self.say(first, q)
            self.say(self.other(first), r)

    def open_session(self) -> None:
        self.date += timedelta(days=self.rng.randint(5, 30), hours=self.rng.randint(-4, 4))
        self.cur = []
        first = self.rng.choice([self.a, self.b])
        o, r = self.rng.choice(OPENERS)
        self.say(first, o.format(o=self.other(first)))
        self.say(self.other(first), r.format(o=first))

    def close_session(self) -> None:
        first = self.rng.choice([self.a, self.b])
        o, r = self.rng.choice(CLOSERS)
        self.say(first, o.format(o=self.other(first)))
        self.say(self.other(first), r.format(o=first))
        self.sessions.append({"id": f"S{len(self.sessions) + 1}", "date": self.date.strftime("%Y-%m-%d %H:%M"),
                              "turns": self.cur})
        self.cur = []


def profile(rng: random.Random) -> dict[str, Any]:
    kin = rng.sample(KIN, 2)
    names = rng.sample(KIN_NAMES, 3)
    thing, colours = rng.choice(THINGS)
    c1, c2 = rng.sample(colours, 2)
    return {"kin": [(kin[0], names[0]), (kin[1], names[1])], "cousin": names[2],
            "activity": rng.sample(ACTIVITIES, 2), "thing": (thing, c1, c2), "hobby": rng.choice(HOBBIES),
            "bands": rng.sample(BANDS, 2), "cousin_city": rng.choice(CITIES), "gift": rng.choice(GIFTS),
            "car": rng.choice(CARS), "jobs": rng.sample(JOBS, 2), "trip": rng.choice(CITIES)}


# ------------------------------------------------------------------------------------------ fact events

def ev_activity(c: Conv, who: str, p: dict[str, Any], i: int) -> None:
    (rel, _), name = p["kin"][i % 2]
    place, detail = p["activity"][i]
    ago = c.rng.choice([1, 2, 3, 5, 6])
    day = c.date - timedelta(days=ago)
    when = "yesterday" if ago == 1 else f"last {WEEKDAYS[day.weekday()]}" if ago >= 2 else "today"
    if when.startswith("last") and (c.date - day).days >= 7:
        when = "yesterday"
    t = c.say(who, f"{when[:1].upper() + when[1:]} I took my {rel} {name} to a {place}. We {detail}!")
    c.echo(c.other(who), f"a {place} with {name}")
    c.say(who, c.rng.choice([f"{name} hasn't stopped talking about it since.", "It was honestly the best day in ages.",
                             f"I think {name} wants to go back every weekend now."]))
    c.ask(f"When did {who} take their {rel} to the {place}?", "temporal", [t],
          f"{_d(day)} ({when}, relative to {_d(c.date)})")
    c.ask(f"Who did {who} go to the {place} with?", "single-hop", [t], f"{who}'s {rel} {name}")
    c.ask(f"What did {who} and {name} do at the {place}?", "single-hop", [t], detail)
    c.ask(f"When did {c.other(who)} take {name} to the {place}?", "adversarial", [t],
          f"Not {c.other(who)}: {who} took {name} there on {_d(day)}.")


def ev_thing(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    thing, c1, c2 = p["thing"]
    if stage == 0:
        t = c.say(who, f"I finally treated myself and bought a {c1} {thing}. It was on sale!")
        c.echo(c.other(who), f"a {c1} {thing}")
    else:
        t = c.say(who, f"Bad luck: the {c1} {thing} got wrecked, so I replaced it with a {c2} one.")
        c.say(c.other(who), c.rng.choice(["Oh no! At least you got a new one.", "Of all things! Was it insured?"]))
    return t


def ev_band(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    b0, b1 = p["bands"]
    if stage == 0:
        t = c.say(who, f"I have {b0} on repeat, they're my favourite band right now.")
        c.say(c.other(who), c.rng.choice(["Good taste!", f"I've never really listened to {b0}.", "Oh, nice."]))
    else:
        t = c.say(who, f"Confession: I'm kind of over {b0}. {b1} is my new obsession, I saw them live.")
        c.echo(c.other(who), f"{b1} live")
    return t


def ev_cousin(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    name, city, gift = p["cousin"], p["cousin_city"], p["gift"]
    if stage == 0:
        t = c.say(who, f"My cousin {name} just moved to {city} for a new job, I'm so jealous.")
        c.say(c.other(who), f"{city} sounds beautiful. Will you visit?")
        c.say(who, "Hopefully in the summer if I can save up.")
    else:
        t = c.say(who, f"{name} surprised me with {gift} for my birthday, shipped all the way over.")
        c.echo(c.other(who), gift)
    return t


def ev_hobby(c: Conv, who: str, p: dict[str, Any]) -> str:
    _, line, _ = p["hobby"]
    t = c.say(who, line)
    c.say(c.other(who), c.rng.choice(["That's such a good way to unwind.", "I didn't know you were into that!",
                                      "You always find the coolest hobbies."]))
    return t


def ev_job(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    j0, j1 = p["jobs"]
    if stage == 0:
        t = c.say(who, f"Being a {j0} is rewarding but the shifts are long.")
        c.say(c.other(who), "How long have you been doing that now?")
        c.say(who, "Almost six years. Time flies.")
    else:
        t = c.say(who, f"Big news: I left my {j0} job. I start retraining as a {j1} next month!")
        c.echo(c.other(who), f"a {j1}")
    return t


def ev_trip(c: Conv, who: str, p: dict[str, Any]) -> str:
    city = p["trip"]
    nights = c.rng.choice(["three", "four", "five", "six"])
    t = c.say(who, f"I'm back from {nights} nights in {city}. I ate so well and walked everywhere.")
    c.say(c.other(who), f"How was {city}? I've always wanted to go.")
    c.say(who, "Go in spring, the crowds are smaller.")
    c.ask(f"How many nights did {who} spend in {city}?", "single-hop", [t], nights)
    c.ask(f"When did {who} come back from {city}?", "temporal", [t], f"around {_d(c.date)}")
    return t


def ev_car(c: Conv, who: str, p: dict[str, Any]) -> str:
    car = p["car"]
    t = c.say(who, f"We traded in the old car for {car}, mostly for road trips.")
    c.say(c.other(who), c.rng.choice(["Road trip season!", "Nice upgrade.", "Where are you driving first?"]))
    c.ask(f"What kind of vehicle did {who} get?", "single-hop", [t], car)
    return t


# ------------------------------------------------------------------------------------------ assembly

def build(rng: random.Random, cid: int, a: str, b: str) -> dict[str, Any]:
    start = datetime(2022, 3, 1) + timedelta(days=rng.randint(0, 300), hours=rng.randint(8, 20))
    c = Conv(rng, a, b, start)
    prof = {a: profile(rng), b: profile(rng)}
    while prof[b]["trip"] == prof[a]["trip"]:
        prof[b]["trip"] = rng.choice(CITIES)
    n = rng.randint(14, 20)
    plan: list[list[Any]] = [[] for _ in range(n)]
    marks: dict[Any, str] = {}

    def at(i: int, key: Any, fn: Any) -> None:
        plan[max(0, min(n - 1, i))].append((key, fn))

    for who in (a, b):
        p = prof[who]
        s = rng.sample(range(n), 6)
        at(s[0], None, lambda who=who, p=p: ev_activity(c, who, p, 0))
        at(s[1], None, lambda who=who, p=p: ev_activity(c, who, p, 1))
        at(s[2], None, lambda who=who, p=p: ev_trip(c, who, p))
        at(s[3], None, lambda who=who, p=p: ev_car(c, who, p))
        at(s[4], (who, "hobby"), lambda who=who, p=p: ev_hobby(c, who, p))
        t0 = rng.randint(0, n // 2 - 1)
        at(t0, (who, "thing0"), lambda who=who, p=p: ev_thing(c, who, p, 0))
        at(rng.randint(t0 + 2, n - 1), (who, "thing1"), lambda who=who, p=p: ev_thing(c, who, p, 1))
        b0 = rng.randint(0, n // 2 - 1)
        at(b0, (who, "band0"), lambda who=who, p=p: ev_band(c, who, p, 0))
        at(rng.randint(b0 + 2, n - 1), (who, "band1"), lambda who=who, p=p: ev_band(c, who, p, 1))
        c0 = rng.randint(0, n // 2 - 1)
        at(c0, (who, "cousin0"), lambda who=who, p=p: ev_cousin(c, who, p, 0))
        at(rng.randint(c0 + 2, n - 1), (who, "cousin1"), lambda who=who, p=p: ev_cousin(c, who, p, 1))
        j0 = rng.randint(0, n // 2 - 1)
        at(j0, (who, "job0"), lambda who=who, p=p: ev_job(c, who, p, 0))
        at(rng.randint(j0 + 2, n - 1), (who, "job1"), lambda who=who, p=p: ev_job(c, who, p, 1))

    for i in range(n):
        c.open_session()
        items = plan[i]
        rng.shuffle(items)
        c.chatter(rng.randint(1, 3))
        for key, fn in items:
            t = fn()
            if key is not None:
                marks[key] = t
            if rng.random() < 0.5:
                c.chatter(1)
            else:
                c.say(rng.choice([a, b]), rng.choice(REACT))
        c.chatter(max(0, rng.randint(5, 12) - len(c.cur) // 2))
        c.close_session()

    for who in (a, b):
        p = prof[who]
        other = c.other(who)
        thing, c1, c2 = p["thing"]
        cname, ccity = p["cousin"], p["cousin_city"]
        hobby = p["hobby"][0]
        c.ask(f"What colour is {who}'s {thing} now?", "update", [marks[(who, "thing1")]], c2)
        c.ask(f"What colour was the first {thing} {who} bought?", "single-hop", [marks[(who, "thing0")]], c1)
        c.ask(f"What is {who}'s favourite band these days?", "update", [marks[(who, "band1")]], p["bands"][1])
        c.ask(f"Which band did {who} like before {p['bands'][1]}?", "single-hop", [marks[(who, "band0")]],
              p["bands"][0])
        c.ask(f"What does {who} do for a living now?", "update", [marks[(who, "job1")]],
              f"retraining as a {p['jobs'][1]}")
        c.ask(f"Where does the person who gave {who} {p['gift']} live?", "multi-hop",
              [marks[(who, "cousin1")], marks[(who, "cousin0")]], f"{ccity} ({who}'s cousin {cname})")
        c.ask(f"Which relative of {who} lives in {ccity}, and what did they send?", "multi-hop",
              [marks[(who, "cousin0")], marks[(who, "cousin1")]], f"cousin {cname}; {p['gift']}")
        c.ask(f"How has {who}'s work changed over time?", "multi-hop", [marks[(who, "job0")], marks[(who, "job1")]],
              f"from {p['jobs'][0]} to retraining as a {p['jobs'][1]}")
        q, ans = OPEN[hobby]
        c.ask(q.format(who=who), "open-domain", [marks[(who, "hobby")]], ans.format(who=who))
        c.ask(f"What hobby has {other} picked up, {hobby}?", "adversarial", [marks[(who, "hobby")]],
              f"Not {other}: {who} took up {hobby}.")
        c.ask(f"What colour is {other}'s {thing} that got wrecked?" if prof[other]["thing"][0] != thing
              else f"Why did {other} replace the {c1} {thing}?", "adversarial", [marks[(who, "thing1")]],
              f"Not {other}: it was {who}'s {c1} {thing}.")
        c.ask(f"What is the name of {who}'s landlord?", "unanswerable", [], None)
        c.ask(f"Which instrument did {who} learn as a child?", "unanswerable", [], None)
    return {"id": f"p{cid + 1}", "speakers": [a, b], "sessions": c.sessions, "queries": c.queries}


def generate(seed: int = 11, n_conversations: int = 6) -> dict[str, Any]:
    rng = random.Random(seed)
    convs = [build(rng, i, *PAIRS[i % len(PAIRS)]) for i in range(n_conversations)]
    return {"name": f"people-qa (seed {seed})", "license": "CC0-1.0 (generated by benchmarks/make_people_qa.py)",
            "conversations": convs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "people_qa.json"))
    args = ap.parse_args()
    data = generate(args.seed, args.conversations)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n_turns = sum(len(s["turns"]) for c in data["conversations"] for s in c["sessions"])
    n_q = sum(len(c["queries"]) for c in data["conversations"])
    print(f"wrote {out}: {len(data['conversations'])} conversations, {n_turns} turns, {n_q} queries")


if __name__ == "__main__":
    main()
