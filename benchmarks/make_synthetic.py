"""Generate a synthetic long multi-session chat benchmark in the shared format (DESIGN.md).

    python benchmarks/make_synthetic.py [--seed 7] [--out benchmarks/data/synthetic_longmem.json]

Everything here is written by the MemOS project and released under CC0 (public domain); the output is
deterministic for a given seed.

Each conversation is a long chat between two friends over 12-18 dated sessions. Sessions mix small talk with
life events of both speakers. The events are built to be hard in the ways real chats are hard:

* facts change (a new job, a move, a new pet name) and the old fact stays in the history as a distractor;
* both speakers talk about the same kinds of things (both have pets, jobs, trips), and friends' names are
  shared between them, so a name or topic alone does not identify the answer;
* many answers are short replies ("Yes, twice! ...") that only make sense next to the question they answer;
* questions are phrased unlike the answer (paraphrase, hypernyms: "pet" vs "puppy"), or ask "when", whose
  answer is the dated turn that mentions the event (often with a relative date such as "yesterday").

Query categories: ``single-hop``, ``temporal``, ``paraphrase``, ``multi-session``, ``adjacent`` (the evidence
is a reply whose content words are in the neighbouring turn), ``update`` (the current value of a fact that
changed), ``dialogue`` (the query is itself a short chat snippet, as in MADial). Evidence lists turn ids.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

PAIRS = [("Maya", "Leo"), ("Priya", "Tom"), ("Sofia", "Daniel"), ("Aiko", "Marcus"), ("Elena", "Sam"),
         ("Nadia", "Ben"), ("Grace", "Omar"), ("Hannah", "Luis")]
FRIENDS = ["Chris", "Jordan", "Alex", "Robin", "Casey", "Jamie", "Morgan", "Taylor"]
PETS = [("dog", "puppy", "beagle"), ("dog", "puppy", "golden retriever"), ("cat", "kitten", "tabby"),
        ("cat", "kitten", "Siamese"), ("rabbit", "bunny", "lop-eared")]
PET_NAMES = ["Biscuit", "Pepper", "Mochi", "Juniper", "Waffles", "Ziggy", "Clover", "Nutmeg"]
JOBS = [("nurse", "at the children's hospital", "hospital"), ("data analyst", "at a logistics startup", "startup"),
        ("high school teacher", "at Westbrook High", "school"), ("graphic designer", "at a small agency", "agency"),
        ("paramedic", "with the city ambulance service", "ambulance"), ("accountant", "at a bank downtown", "bank"),
        ("chef", "at an Italian restaurant", "restaurant"), ("software engineer", "at a game studio", "studio")]
INSTRUMENTS = ["cello", "ukulele", "piano", "violin", "drums", "saxophone"]
CITIES = ["Lisbon", "Kyoto", "Reykjavik", "Marrakesh", "Vancouver", "Prague", "Oaxaca", "Tallinn"]
HOMES = ["Portland", "Denver", "Austin", "Baltimore", "Tucson", "Madison"]
RACES = ["10k", "half marathon", "marathon", "trail race"]
BOOKS = [("The Overstory", "Richard Powers"), ("Piranesi", "Susanna Clarke"), ("Circe", "Madeline Miller"),
         ("Project Hail Mary", "Andy Weir"), ("The Remains of the Day", "Kazuo Ishiguro")]
DISHES = ["lasagna", "pad thai", "sourdough bread", "ramen", "paella", "dumplings"]
CARS = ["a used Subaru", "an electric Kia", "an old Volvo wagon", "a red Mini"]
SIBLINGS = ["sister", "brother", "cousin"]
SIB_NAMES = ["Rachel", "Noah", "Ivy", "Ethan", "Clara", "Felix"]

SMALL_TALK = [
    ("Hey! How's your week going?", "Pretty hectic, but good. Yours?"),
    ("Long time no talk! What's new?", "Honestly not much, just trying to keep up with everything."),
    ("Morning! Did you sleep okay?", "Barely, the neighbours had a party until two."),
    ("Ugh, it's been raining all day here.", "Same here, I haven't left the house."),
    ("Any plans for the weekend?", "Nothing big, maybe a movie and some laundry."),
    ("I'm so tired today.", "Coffee time then! Take it easy."),
    ("Did you watch the game last night?", "Only the second half, it was a close one."),
    ("I finally cleaned out my closet.", "That feels so good, doesn't it?"),
]
CLOSERS = [("Anyway, I should get going.", "Talk soon!"), ("Okay, dinner's ready, gotta run.", "Enjoy! Bye!"),
           ("Let's catch up again next week.", "Definitely, take care.")]
REACTIONS = ["That's amazing!", "Oh wow, good for you!", "No way, really?", "That sounds lovely.",
             "Haha, that's so you.", "I'm really happy for you.", "Oh no, that's rough."]


class Conv:
    """Builds one conversation: sessions of turns, plus queries that point at turn ids."""

    def __init__(self, rng: random.Random, cid: int, a: str, b: str, start: datetime) -> None:
        self.rng, self.cid, self.a, self.b = rng, cid, a, b
        self.sessions: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.date = start
        self.cur: list[dict[str, Any]] = []

    def other(self, who: str) -> str:
        return self.b if who == self.a else self.a

    def new_session(self) -> None:
        if self.cur:
            self.close_session()
        self.date += timedelta(days=self.rng.randint(4, 26), hours=self.rng.randint(-3, 3))
        self.cur = []
        opener = self.rng.choice(SMALL_TALK)
        first = self.rng.choice([self.a, self.b])
        self.say(first, opener[0])
        self.say(self.other(first), opener[1])

    def close_session(self) -> None:
        closer = self.rng.choice(CLOSERS)
        first = self.rng.choice([self.a, self.b])
        self.say(first, closer[0])
        self.say(self.other(first), closer[1])
        sid = len(self.sessions) + 1
        self.sessions.append({"id": f"S{sid}", "date": self.date.strftime("%Y-%m-%d %H:%M"), "turns": self.cur})
        self.cur = []

    def say(self, who: str, text: str) -> str:
        tid = f"D{len(self.sessions) + 1}:{len(self.cur) + 1}"
        self.cur.append({"id": tid, "speaker": who, "text": text})
        return tid

    def ask(self, text: str, category: str, evidence: list[str]) -> None:
        self.queries.append({"id": f"q{len(self.queries) + 1}", "text": text, "evidence": list(evidence),
                             "category": category})

    def react(self, who: str) -> None:
        self.say(who, self.rng.choice(REACTIONS))

    def day_words(self, days_ago: int) -> str:
        return {0: "today", 1: "yesterday", 2: "two days ago"}[days_ago]

    def human_date(self, days_ago: int = 0) -> str:
        d = self.date - timedelta(days=days_ago)
        return f"{d:%B} {d.day}, {d.year}"


# ---------------------------------------------------------------------------------------------- event builders
# Each builder adds turns to the current session and registers queries. ``p`` is the owner's profile.

def ev_pet(c: Conv, who: str, p: dict[str, Any]) -> None:
    species, young, breed = p["pet"]
    name = p["pet_name"]
    ago = c.rng.choice([0, 1, 2])
    t1 = c.say(who, f"Big news: we adopted a {breed} {young} {c.day_words(ago)}! We named the little one {name}.")
    c.say(c.other(who), f"Stop it, that's adorable! Send pictures of {name}!")
    t3 = c.say(who, f"{name} already chewed one of my shoes, but I'm in love.")
    c.ask(f"What is the name of {who}'s {species}?", "single-hop", [t1])
    c.ask(f"When did {who} adopt {name}?", "temporal", [t1])
    c.ask(f"Did {who} bring home a new animal companion at some point?", "paraphrase", [t1, t3])


def ev_pet_distractor(c: Conv, who: str, p: dict[str, Any]) -> None:
    # the other speaker talks about someone else's pet with a similar setting
    friend = c.rng.choice(FRIENDS)
    c.say(who, f"{friend} is thinking about getting a {p['pet'][0]} too, but their landlord says no pets.")
    c.say(c.other(who), "Landlords are the worst about that.")


def ev_job_start(c: Conv, who: str, p: dict[str, Any], idx: int) -> str:
    title, where, _ = p["jobs"][idx]
    if idx == 0:
        t = c.say(who, f"I've been working as a {title} {where} for about two years now, and it's wearing me out.")
    else:
        old = p["jobs"][idx - 1][0]
        t = c.say(who, f"So I finally did it: I quit being a {old}. Starting Monday I'm a {title} {where}!")
    if idx == 0:
        c.say(c.other(who), c.rng.choice(["Are you thinking about leaving?", "Is it the hours or the people?"]))
        c.say(who, c.rng.choice(["Both, if I'm honest. I'll give it a few more months.", "The hours, mostly."]))
    else:
        c.say(c.other(who), c.rng.choice(["How do you feel about it?", "That's a big step. Nervous?"]))
        c.say(who, c.rng.choice(["Excited and terrified in equal parts.", "Mostly relieved, honestly."]))
    return t


def ev_job_vent(c: Conv, who: str, p: dict[str, Any], idx: int) -> str:
    _, _, place = p["jobs"][idx]
    t = c.say(who, f"Work at the {place} was brutal this week, we were short-staffed again.")
    c.say(c.other(who), "That sounds exhausting. Are they hiring anyone?")
    c.say(who, "Supposedly. I'll believe it when I see it.")
    return t


def ev_instrument(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    ins = p["instrument"]
    if stage == 0:
        t = c.say(who, f"I signed up for {ins} lessons! My teacher is really patient with me.")
        c.say(c.other(who), "I love that. What made you pick it up?")
        c.say(who, "I've wanted to since I was a kid, and I'm done waiting.")
    else:
        t = c.say(who, f"My {ins} teacher says I'm ready to play at the student recital next month.")
        c.say(c.other(who), "You have to let me come watch!")
    return t


def ev_trip_question(c: Conv, who: str, p: dict[str, Any]) -> None:
    """Adjacent-turn event: the facts are in the other speaker's question; the owner's reply is the evidence."""
    city = p["trip"]
    times = c.rng.choice(["twice", "three times", "once, years ago"])
    q = c.say(c.other(who), f"Wait, have you ever been to {city}? I'm thinking of going in the spring.")
    r = c.say(who, f"Yes, {times}! The food alone is worth the flight. Go, you won't regret it.")
    c.say(c.other(who), "Okay, you've convinced me.")
    c.ask(f"Has {who} been to {city}, and how many times?", "adjacent", [r])
    c.ask(f"Which places has {who} traveled to before?", "paraphrase", [r, q])


def ev_race(c: Conv, who: str, p: dict[str, Any], stage: int) -> str:
    race = p["race"]
    if stage == 0:
        t = c.say(who, f"I registered for a {race}. I've never run more than 5k, so wish me luck.")
        c.say(c.other(who), "You'll crush it. Are you following a training plan?")
        c.say(who, "Three runs a week, and a long one on Sundays.")
    elif stage == 1:
        t = c.say(who, f"Training update: my long run on Sunday went great, my knee held up.")
        c.say(c.other(who), "Proud of you! How far did you go?")
        c.say(who, "Further than ever. I'm starting to believe I can finish.")
    else:
        ago = c.rng.choice([1, 2])
        t = c.say(who, f"I finished the {race} {c.day_words(ago)}! My legs are destroyed but I did it.")
        c.say(c.other(who), "YES! I knew you would. What was your time?")
        c.say(who, "Slower than I hoped, but I didn't walk once.")
    return t


def ev_move(c: Conv, who: str, p: dict[str, Any]) -> str:
    new = p["home"][1]
    t = c.say(who, f"We signed the lease! We're moving to {new} at the end of the month.")
    c.say(c.other(who), f"{new}? That's so far! I'm going to miss you.")
    c.say(who, "I know, but the job market there is so much better for us.")
    return t


def ev_home(c: Conv, who: str, p: dict[str, Any]) -> str:
    old = p["home"][0]
    t = c.say(who, f"Rent in {old} went up again, it's getting ridiculous.")
    c.say(c.other(who), "Everywhere is like that now.")
    return t


def ev_sibling(c: Conv, who: str, p: dict[str, Any]) -> None:
    rel, name = p["sibling"]
    ago = c.rng.choice([1, 2])
    t1 = c.say(who, f"My {rel} {name} got married {c.day_words(ago)}. I cried through the whole ceremony.")
    c.say(c.other(who), "Aww! Was it a big wedding?")
    t3 = c.say(who, "Small, maybe forty people, in a barn outside town. Perfect weather too.")
    c.ask(f"When did {who}'s {rel} {name} get married?", "temporal", [t1])
    c.ask(f"How many guests came to {name}'s wedding and where was it held?", "adjacent", [t3])


def ev_book(c: Conv, who: str, p: dict[str, Any]) -> None:
    title, author = p["book"]
    t1 = c.say(who, f"I'm halfway through {title} by {author} and I can't put it down.")
    c.say(c.other(who), "Is it good? I need something for my commute.")
    c.say(who, "You'd love it. I'll lend it to you when I'm done.")
    c.ask(f"What book was {who} unable to put down?", "single-hop", [t1])
    c.ask(f"Which novel by {author} was {who} reading?", "single-hop", [t1])


def ev_cooking(c: Conv, who: str, p: dict[str, Any]) -> None:
    dish = p["dish"]
    friend = p["friend"]
    t1 = c.say(who, f"I tried making {dish} from scratch for {friend}'s birthday dinner.")
    c.say(c.other(who), "How did it turn out?")
    t3 = c.say(who, "A total disaster at first, but the second batch was actually good.")
    c.ask(f"What did {who} cook for {friend}'s birthday?", "single-hop", [t1])
    c.ask(f"How did {who}'s homemade birthday meal turn out?", "adjacent", [t3])


def ev_car(c: Conv, who: str, p: dict[str, Any]) -> None:
    car = p["car"]
    t1 = c.say(who, f"I finally replaced my bike commute: I bought {car} last week.")
    c.say(c.other(who), "Congrats! New car smell?")
    c.say(who, "Not exactly new, but it runs great.")
    c.ask(f"What vehicle did {who} buy?", "paraphrase", [t1])


def ev_shared_friend(c: Conv, who: str, p: dict[str, Any]) -> None:
    friend = p["friend"]
    c.say(who, f"I ran into {friend} at the grocery store, they say hi.")
    c.say(c.other(who), f"Oh nice, I haven't seen {friend} in ages.")


def ev_feeling(c: Conv, who: str, p: dict[str, Any]) -> tuple[str, str]:
    worry = c.rng.choice([
        ("I've been feeling really anxious about money lately.", "money"),
        ("I can't sleep, my mind keeps racing about everything at once.", "sleep"),
        ("I feel like I never have time for myself anymore.", "time"),
    ])
    t = c.say(who, worry[0])
    c.say(c.other(who), "I'm sorry. Do you want to talk about it?")
    c.say(who, "Maybe later. It helps just saying it out loud.")
    return t, worry[1]


# ---------------------------------------------------------------------------------------------- assembly

def profile(rng: random.Random) -> dict[str, Any]:
    jobs = rng.sample(JOBS, 2)
    homes = rng.sample(HOMES, 2)
    pet = rng.choice(PETS)
    return {"pet": pet, "pet_name": rng.choice(PET_NAMES), "jobs": jobs, "instrument": rng.choice(INSTRUMENTS),
            "trip": rng.choice(CITIES), "race": rng.choice(RACES), "home": homes,
            "sibling": (rng.choice(SIBLINGS), rng.choice(SIB_NAMES)), "book": rng.choice(BOOKS),
            "dish": rng.choice(DISHES), "car": rng.choice(CARS), "friend": rng.choice(FRIENDS)}


def build_conversation(rng: random.Random, cid: int, a: str, b: str) -> dict[str, Any]:
    start = datetime(2023, 1, 1) + timedelta(days=rng.randint(0, 200), hours=rng.randint(9, 20))
    c = Conv(rng, cid, a, b, start)
    prof = {a: profile(rng), b: profile(rng)}
    # distinct trip cities / pet names between the two speakers keep questions answerable
    while prof[b]["trip"] == prof[a]["trip"]:
        prof[b]["trip"] = rng.choice(CITIES)
    while prof[b]["pet_name"] == prof[a]["pet_name"]:
        prof[b]["pet_name"] = rng.choice(PET_NAMES)
    prof[b]["friend"] = prof[a]["friend"]  # a shared friend: a name that does not identify the speaker
    n_sessions = rng.randint(12, 18)
    plan: list[list[Callable[[], Any]]] = [[] for _ in range(n_sessions)]
    marks: dict[str, Any] = {}

    def at(i: int, fn: Callable[[], Any]) -> None:
        plan[max(0, min(n_sessions - 1, i))].append(fn)

    for who in (a, b):
        p = prof[who]
        s = rng.sample(range(n_sessions), 8)
        job_change = rng.randint(n_sessions // 2, n_sessions - 2)
        at(rng.randint(0, 2), lambda who=who, p=p: marks.setdefault((who, "job0"), ev_job_start(c, who, p, 0)))
        at(rng.randint(3, job_change - 1), lambda who=who, p=p: marks.setdefault((who, "vent0"), ev_job_vent(c, who, p, 0)))
        at(job_change, lambda who=who, p=p: marks.setdefault((who, "job1"), ev_job_start(c, who, p, 1)))
        at(min(n_sessions - 1, job_change + rng.randint(1, 3)),
           lambda who=who, p=p: marks.setdefault((who, "vent1"), ev_job_vent(c, who, p, 1)))
        at(s[0], lambda who=who, p=p: ev_pet(c, who, p))
        at(s[1], lambda who=who, p=p: ev_trip_question(c, who, p))
        at(s[2], lambda who=who, p=p: ev_sibling(c, who, p))
        at(s[3], lambda who=who, p=p: ev_book(c, who, p))
        at(s[4], lambda who=who, p=p: ev_cooking(c, who, p))
        at(s[5], lambda who=who, p=p: ev_car(c, who, p))
        at(s[6], lambda who=who, p=p: ev_shared_friend(c, who, p))
        at(s[7], lambda who=who, p=p: ev_pet_distractor(c, who, p))
        r0 = rng.randint(0, n_sessions // 4)
        r1 = rng.randint(r0 + 1, r0 + 3)
        r2 = rng.randint(r1 + 1, r1 + 5)
        for stage, si in enumerate((r0, r1, r2)):
            at(si, lambda who=who, p=p, stage=stage: marks.setdefault((who, f"race{stage}"), ev_race(c, who, p, stage)))
        i0 = rng.randint(1, n_sessions - 4)
        for stage, si in enumerate((i0, i0 + rng.randint(2, 3))):
            at(si, lambda who=who, p=p, stage=stage: marks.setdefault((who, f"ins{stage}"), ev_instrument(c, who, p, stage)))
        if who == a or rng.random() < 0.5:
            mv = rng.randint(n_sessions // 2, n_sessions - 1)
            at(rng.randint(0, mv - 1), lambda who=who, p=p: marks.setdefault((who, "home0"), ev_home(c, who, p)))
            at(mv, lambda who=who, p=p: marks.setdefault((who, "move"), ev_move(c, who, p)))
        fs = rng.randint(0, n_sessions - 1)
        at(fs, lambda who=who, p=p: marks.setdefault((who, "feel"), ev_feeling(c, who, p)))

    for i in range(n_sessions):
        c.new_session()
        fns = plan[i]
        rng.shuffle(fns)
        for fn in fns:
            fn()
            if rng.random() < 0.35:
                small = rng.choice(SMALL_TALK)
                first = rng.choice([a, b])
                c.say(first, small[0])
                c.say(c.other(first), small[1])
            elif rng.random() < 0.3:
                c.react(rng.choice([a, b]))
        if len(c.cur) < 6:
            st = rng.choice(SMALL_TALK)
            c.say(a, st[0])
            c.say(b, st[1])
    c.close_session()

    # queries that need marks from several events
    for who in (a, b):
        p = prof[who]
        title0, title1 = p["jobs"][0][0], p["jobs"][1][0]
        c.ask(f"What does {who} do for work now?", "update", [marks[(who, "job1")]])
        c.ask(f"What was {who}'s job before the career change?", "single-hop", [marks[(who, "job0")]])
        c.ask(f"When did {who} switch careers to become a {title1}?", "temporal", [marks[(who, "job1")]])
        c.ask(f"What jobs has {who} had, and what were the complaints about them?", "multi-session",
              [marks[(who, k)] for k in ("job0", "vent0", "job1", "vent1") if (who, k) in marks])
        c.ask(f"How did {who}'s preparation for the {p['race']} go, from signing up to race day?", "multi-session",
              [marks[(who, f"race{i}")] for i in range(3)])
        c.ask(f"When did {who} complete the {p['race']}?", "temporal", [marks[(who, "race2")]])
        c.ask(f"Has {who} been working on any musical skills?", "paraphrase", [marks[(who, "ins0")], marks[(who, "ins1")]])
        c.ask(f"Is {who} going to perform in front of an audience?", "paraphrase", [marks[(who, "ins1")]])
        if (who, "move") in marks:
            c.ask(f"Which city is {who} relocating to?", "update", [marks[(who, "move")]])
            c.ask(f"Where did {who} live before relocating, and why was it a problem?", "multi-session",
                  [marks[(who, "home0")], marks[(who, "move")]])
        tf, topic = marks[(who, "feel")]
        other = c.other(who)
        dialogue_openers = {
            "money": f"{other}: Hey, you seemed stressed the other day. {who}: Yeah, bills keep piling up and I "
                     f"don't know how to budget. {other}: Want to go through it together?",
            "sleep": f"{other}: You look exhausted. {who}: I was up at 3am again, staring at the ceiling. "
                     f"{other}: Has that been happening a lot?",
            "time": f"{other}: Are you coming to the picnic? {who}: I wish, but between work and errands I don't "
                    f"get a single hour for me. {other}: That's been going on for a while, hasn't it?",
        }
        c.ask(dialogue_openers[topic], "dialogue", [tf])
        c.ask(f"{other}: I saw someone running in the park today and thought of you. {who}: Ha, I bet it was "
              f"someone in better shape. {other}: Remember how nervous you were when you first signed up?",
              "dialogue", [marks[(who, "race0")]])
    return {"id": f"c{cid + 1}", "speakers": [a, b], "sessions": c.sessions, "queries": c.queries}


def generate(seed: int = 7, n_conversations: int = 8) -> dict[str, Any]:
    rng = random.Random(seed)
    convs = [build_conversation(rng, i, *PAIRS[i % len(PAIRS)]) for i in range(n_conversations)]
    return {"name": f"synthetic-longmem (seed {seed})", "license": "CC0-1.0 (generated by benchmarks/make_synthetic.py)",
            "conversations": convs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "synthetic_longmem.json"))
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
