"""Generate an assistant-style memory benchmark: a user tells an assistant facts and preferences among chit-chat,
and later asks about them (DESIGN.md format).

    python benchmarks/make_assistant_prefs.py [--seed 23] [--out benchmarks/data/assistant_prefs.json]

Written by the MemOS project and released under CC0 (public domain); deterministic for a given seed.

Each conversation is one user (speaker: their first name) chatting with an assistant (speaker ``Assistant``)
over 12-16 dated sessions. Most turns are what assistant chats are made of: greetings, thanks, requests for
recipes or e-mails answered at length by the assistant, and *echoes* of facts: the user asks "Do you remember my
cat's name?" before ever saying it, the assistant replies that it does not know yet, then the user tells it
("It's Miso!") and the assistant acknowledges. Queries are what the user asks later, in the first person and
usually without any name ("What's my cat called?", "Any ideas for dinner tonight?"):

* ``fact``: a personal fact stated once (often as a short answer to the assistant's question);
* ``preference``: a stated like or dislike, asked about directly;
* ``implicit``: a request whose answer depends on a stated preference that shares no word with it ("Suggest a
  snack for my hike" -> "I'm allergic to peanuts");
* ``update``: a fact or preference that changed (moved city, switched coffee for tea); the old value stays;
* ``temporal``: when an appointment or event is, stated with a relative date ("next Tuesday");
* ``chat``: the query is the last few turns of a new chat (as a chat engine searches), ending with the request.

Every query carries a gold ``answer``.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

USERS = ["Dana", "Rupert", "Mei", "Oskar", "Leila", "Tobias", "Priyanka", "Hugo", "Ayla", "Sven"]
A = "Assistant"
PETS = [("cat", ["Miso", "Pickle", "Luna", "Noodle"]), ("dog", ["Bingo", "Rufus", "Poppy", "Chester"]),
        ("parrot", ["Kiwi", "Captain", "Mango", "Echo"]), ("hamster", ["Peanut", "Nibbles", "Dot", "Fudge"])]
DIETS = [("vegetarian", "I don't eat meat, I've been vegetarian for years.", "no meat: a vegetarian dish"),
         ("vegan", "I'm vegan, so no animal products at all please.", "a vegan dish (no animal products)"),
         ("pescatarian", "I eat fish but no other meat.", "fish or vegetables, no other meat"),
         ("gluten-free", "I have coeliac disease, so everything has to be gluten-free.", "a gluten-free dish")]
ALLERGIES = [("peanuts", "I'm seriously allergic to peanuts, even a trace sends me to hospital."),
             ("shellfish", "Shellfish makes me break out in hives, I have to avoid it completely."),
             ("sesame", "I react badly to sesame, so I check every label."),
             ("kiwi fruit", "Kiwi fruit makes my mouth itch and swell, it's an allergy.")]
KIDS = [("daughter", ["Lucy", "Ana", "Maeve", "Iman"]), ("son", ["Jonah", "Kai", "Mateus", "Finn"])]
CITIES = ["Leeds", "Utrecht", "Bilbao", "Turin", "Malmo", "Cork", "Lille", "Bern"]
DRINKS = [("oat milk flat white", "green tea"), ("double espresso", "chai latte"),
          ("iced americano", "peppermint tea"), ("cappuccino", "rooibos tea")]
SEATS = [("aisle", "I always want an aisle seat on flights, I get up a lot."),
         ("window", "Window seat every time, I like to sleep against the wall.")]
MUSIC = [("90s hip hop", "Nothing gets me moving like 90s hip hop."), ("metal", "I run to heavy metal, the faster the better."),
         ("disco", "Disco is my workout music, don't judge."), ("film soundtracks", "I work out to epic film soundtracks.")]
GOALS = [("a triathlon", "I signed up for my first triathlon in the autumn, so I'm training a lot."),
         ("a cycling tour of the Alps", "I'm training for a week-long cycling tour in the Alps."),
         ("a 100 km charity walk", "I'm preparing for a 100 km charity walk next year.")]
APPTS = [("dentist", "a check-up and a cleaning"), ("optician", "new glasses"), ("physio", "my shoulder"),
         ("vet", "vaccinations")]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

GREET = [("Good morning!", "Good morning! How can I help you today?"),
         ("Hi again.", "Hi! Nice to hear from you. What's on your mind?"),
         ("Hey, are you there?", "I'm here! What can I do for you?"),
         ("Hello hello", "Hello! What would you like to do today?")]
BYE = [("Thanks, that's all for now.", "You're welcome! Have a great day."),
       ("Perfect, thank you!", "Happy to help. Talk soon!"),
       ("ok cool, bye", "Bye! Come back any time.")]
SMALL = [("How are you today?", "I'm doing well, thanks for asking! How are you?"),
         ("lol", "Glad that made you laugh!"),
         ("I'm so tired today.", "Sorry to hear that. Maybe a short walk or an early night would help?"),
         ("Ugh, Mondays.", "Mondays can be rough. Anything I can take off your plate?"),
         ("Thanks, you're the best.", "Aw, thank you! Anything else?"),
         ("Never mind, I figured it out.", "Great, glad you sorted it out!"),
         ("Hmm, let me think about it.", "Of course, take your time.")]
# general requests answered at length: they share everyday words (dinner, trip, gift, music, coffee) with the
# later queries without holding any personal fact
REQUESTS = [
    ("Can you give me a quick dinner idea for a weeknight?",
     "Sure! A quick weeknight dinner could be a stir-fry: cook rice, fry whatever vegetables you have with garlic "
     "and ginger, add a protein and a splash of soy sauce. Ready in twenty minutes."),
    ("What's a good gift for a coworker who is leaving?",
     "A nice notebook and pen, a plant for their new desk, or a gift card for a local cafe are all thoughtful "
     "gifts. A card signed by the whole team is a lovely touch too."),
    ("Help me write a short email asking my manager for Friday off.",
     "Here's a draft: 'Hi, I'd like to request this Friday off for a personal matter. My tasks are on track and "
     "I'll make sure everything is covered. Thanks!' Feel free to adjust the tone."),
    ("Any tips for packing light for a weekend trip?",
     "Pick one colour palette so everything matches, roll your clothes, bring travel-size toiletries and wear "
     "your bulkiest shoes on the journey. A weekend needs less than you think."),
    ("What music is good for focusing while I work?",
     "Many people focus well with instrumental music: lo-fi beats, classical piano, ambient or video game "
     "soundtracks. Anything without lyrics tends to work best."),
    ("How do I make cold brew coffee at home?",
     "Mix coarse ground coffee with cold water at about one to eight, leave it in the fridge for 12 to 18 hours, "
     "then strain it. Dilute to taste and serve over ice."),
    ("Can you recommend a good stretching routine after running?",
     "Try calf stretches against a wall, a standing quad stretch, a hamstring stretch, hip flexor lunges and a "
     "gentle back twist. Hold each for about 30 seconds."),
    ("What should I bring to a picnic?",
     "Sandwiches or wraps, fruit, a salad in a jar, something sweet, plenty of water, a blanket, napkins and a "
     "bag for rubbish. A frisbee never hurts."),
    ("How can I sleep better?",
     "Keep a regular bedtime, avoid screens for an hour before sleep, keep the room cool and dark, and cut "
     "caffeine after lunch. A short wind-down routine helps a lot."),
    ("Suggest a fun weekend activity in the city.",
     "You could visit a museum or gallery, try a food market, join a walking tour, catch a matinee, or rent "
     "bikes and explore a new neighbourhood."),
]
ACKS = ["Got it, I'll remember that.", "Thanks for telling me! Noted.", "Noted, I'll keep that in mind.",
        "Good to know, thanks."]


class Conv:
    def __init__(self, rng: random.Random, user: str, start: datetime) -> None:
        self.rng, self.user = rng, user
        self.sessions: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.cur: list[dict[str, Any]] = []
        self.date = start

    def say(self, who: str, text: str) -> str:
        tid = f"D{len(self.sessions) + 1}:{len(self.cur) + 1}"
        self.cur.append({"id": tid, "speaker": who, "text": text})
        return tid

    def u(self, text: str) -> str:
        return self.say(self.user, text)

    def a(self, text: str) -> str:
        return self.say(A, text)

    def ask(self, text: str, category: str, evidence: list[str], answer: str) -> None:
        self.queries.append({"id": f"q{len(self.queries) + 1}", "text": text, "evidence": evidence,
                             "category": category, "answer": answer})

    def filler(self, n: int) -> None:
        for _ in range(n):
            if self.rng.random() < 0.55:
                q, r = self.rng.choice(REQUESTS)
                self.u(q)
                self.a(r)
                if self.rng.random() < 0.4:
                    self.u(self.rng.choice(["Thanks!", "Nice, thank you.", "ok", "Perfect."]))
            else:
                q, r = self.rng.choice(SMALL)
                self.u(q)
                self.a(r)

    def open_session(self) -> None:
        self.date += timedelta(days=self.rng.randint(3, 21), hours=self.rng.randint(-5, 5))
        self.cur = []
        g, r = self.rng.choice(GREET)
        self.u(g)
        self.a(r)

    def close_session(self) -> None:
        b, r = self.rng.choice(BYE)
        self.u(b)
        self.a(r)
        self.sessions.append({"id": f"S{len(self.sessions) + 1}", "date": self.date.strftime("%Y-%m-%d %H:%M"),
                              "turns": self.cur})
        self.cur = []


def profile(rng: random.Random) -> dict[str, Any]:
    species, names = rng.choice(PETS)
    kid, knames = rng.choice(KIDS)
    drink = rng.choice(DRINKS)
    c0, c1 = rng.sample(CITIES, 2)
    return {"pet": (species, rng.choice(names)), "diet": rng.choice(DIETS), "allergy": rng.choice(ALLERGIES),
            "kid": (kid, rng.choice(knames), rng.randint(4, 15)), "drink": drink, "cities": (c0, c1),
            "seat": rng.choice(SEATS), "music": rng.choice(MUSIC), "goal": rng.choice(GOALS),
            "appt": rng.choice(APPTS)}


# ------------------------------------------------------------------------------------------ fact events

def ev_pet(c: Conv, p: dict[str, Any]) -> str:
    species, name = p["pet"]
    c.u(f"Do you remember my {species}'s name?")
    c.a(f"I don't think you've told me your {species}'s name yet. What is it?")
    t = c.u(f"Oh, it's {name}!")
    c.a(c.rng.choice([f"{name} is a lovely name for a {species}! I'll remember it.", c.rng.choice(ACKS)]))
    return t


def ev_diet(c: Conv, p: dict[str, Any]) -> str:
    c.u("Can you plan some meals for me this week?")
    c.a("Happy to! Before I start: do you have any dietary requirements I should know about?")
    t = c.u(p["diet"][1])
    c.a(c.rng.choice(ACKS) + " Here's a start: a lentil soup on Monday, a big salad on Tuesday, and a bean chili "
        "on Wednesday.")
    return t


def ev_allergy(c: Conv, p: dict[str, Any]) -> str:
    t = c.u(p["allergy"][1])
    c.a("Thank you for telling me, that's important. I'll flag it whenever food comes up.")
    return t


def ev_kid(c: Conv, p: dict[str, Any]) -> str:
    kid, name, age = p["kid"]
    c.u(f"I need ideas for a birthday party for my {kid}.")
    c.a(f"Fun! How old is your {kid} turning, and what's their name?")
    t = c.u(f"{name} is turning {age} next month.")
    c.a(f"Happy early birthday to {name}! For a {age}-year-old, a treasure hunt or a craft party usually goes down well.")
    return t


def ev_city(c: Conv, p: dict[str, Any], stage: int) -> str:
    c0, c1 = p["cities"]
    if stage == 0:
        t = c.u(f"Is it always this rainy in {c0} in spring? I've lived here three years and still can't get used to it.")
        c.a(f"{c0} does get a lot of rain in spring! A good raincoat and waterproof shoes make a big difference.")
    else:
        t = c.u(f"Big news: we moved! We live in {c1} now, the boxes are everywhere.")
        c.a(f"Congratulations on the move to {c1}! Let me know if you need help settling in.")
    return t


def ev_drink(c: Conv, p: dict[str, Any], stage: int) -> str:
    d0, d1 = p["drink"]
    if stage == 0:
        t = c.u(f"My usual order is a {d0}, I can't start the day without it.")
        c.a(c.rng.choice(ACKS))
    else:
        t = c.u(f"I've cut out coffee completely, doctor's orders. It's {d1} for me now.")
        c.a(f"That's a big change! {d1[:1].upper() + d1[1:]} is a nice choice.")
    return t


def ev_seat(c: Conv, p: dict[str, Any]) -> str:
    c.u("I'm booking flights for a work trip next month.")
    c.a("Sure! Do you have any seat preference?")
    t = c.u(p["seat"][1])
    c.a(c.rng.choice(ACKS))
    return t


def ev_music(c: Conv, p: dict[str, Any]) -> str:
    t = c.u(p["music"][1])
    c.a("Ha, whatever keeps you going!")
    return t


def ev_goal(c: Conv, p: dict[str, Any]) -> str:
    t = c.u(p["goal"][1])
    c.a("That's a great goal! Consistency is everything. Do you have a plan?")
    c.u("Kind of. I'll figure it out.")
    return t


def ev_appt(c: Conv, p: dict[str, Any]) -> tuple[str, str]:
    what, why = p["appt"]
    days = c.rng.randint(2, 9)
    day = c.date + timedelta(days=days)
    phrase = f"next {WEEKDAYS[day.weekday()]}" if days >= 7 or day.weekday() < c.date.weekday() \
        else f"this {WEEKDAYS[day.weekday()]}"
    if days == 7:
        phrase = "a week from today"
    c.u("Can you remind me to book a taxi?")
    c.a("I can't set reminders, but I can help you write a note. When do you need it?")
    t = c.u(f"I have a {what} appointment {phrase} at 9, for {why}.")
    c.a(c.rng.choice(ACKS))
    return t, f"{day:%A} {day.day} {day:%B %Y} at 9"


# ------------------------------------------------------------------------------------------ assembly

def build(rng: random.Random, cid: int, user: str) -> dict[str, Any]:
    start = datetime(2023, 1, 10) + timedelta(days=rng.randint(0, 250), hours=rng.randint(7, 21))
    c = Conv(rng, user, start)
    p = profile(rng)
    n = rng.randint(12, 16)
    plan: list[list[Any]] = [[] for _ in range(n)]
    marks: dict[str, Any] = {}

    def at(i: int, key: str, fn: Any) -> None:
        plan[max(0, min(n - 1, i))].append((key, fn))

    s = rng.sample(range(n - 2), 8)
    at(s[0], "pet", lambda: ev_pet(c, p))
    at(s[1], "diet", lambda: ev_diet(c, p))
    at(s[2], "allergy", lambda: ev_allergy(c, p))
    at(s[3], "kid", lambda: ev_kid(c, p))
    at(s[4], "seat", lambda: ev_seat(c, p))
    at(s[5], "music", lambda: ev_music(c, p))
    at(s[6], "goal", lambda: ev_goal(c, p))
    at(s[7], "appt", lambda: ev_appt(c, p))
    m0 = rng.randint(0, n // 2 - 1)
    at(m0, "city0", lambda: ev_city(c, p, 0))
    at(rng.randint(m0 + 2, n - 1), "city1", lambda: ev_city(c, p, 1))
    d0 = rng.randint(0, n // 2 - 1)
    at(d0, "drink0", lambda: ev_drink(c, p, 0))
    at(rng.randint(d0 + 2, n - 1), "drink1", lambda: ev_drink(c, p, 1))

    for i in range(n):
        c.open_session()
        items = plan[i]
        rng.shuffle(items)
        c.filler(rng.randint(0, 2))
        for key, fn in items:
            marks[key] = fn()
            c.filler(rng.randint(0, 2))
        c.filler(max(0, rng.randint(3, 6) - len(items)))
        c.close_session()

    species, name = p["pet"]
    kid, kname, age = p["kid"]
    c0, c1 = p["cities"]
    d0, d1 = p["drink"]
    appt_turn, appt_when = marks["appt"]
    c.ask(f"What's my {species} called?", "fact", [marks["pet"]], name)
    c.ask(f"How old is my {kid}?", "fact", [marks["kid"]], f"{age} (turning {age})")
    c.ask(f"What's my {kid}'s name again?", "fact", [marks["kid"]], kname)
    c.ask("Do I have any food allergies?", "fact", [marks["allergy"]], p["allergy"][0])
    c.ask("What kind of seat do I like on a plane?", "preference", [marks["seat"]], p["seat"][0])
    c.ask("What music do I like to work out to?", "preference", [marks["music"]], p["music"][0])
    c.ask("What's my diet?", "preference", [marks["diet"]], p["diet"][0])
    c.ask("Any ideas for what I could cook tonight?", "implicit", [marks["diet"], marks["allergy"]],
          f"{p['diet'][2]}, without {p['allergy'][0]}")
    c.ask("Can you suggest a snack to take on a long hike?", "implicit", [marks["allergy"]],
          f"anything without {p['allergy'][0]}")
    c.ask("Make me a playlist for the gym.", "implicit", [marks["music"]], p["music"][0])
    c.ask("What am I training for?", "fact", [marks["goal"]], p["goal"][0])
    c.ask("Where do I live?", "update", [marks["city1"]], c1)
    c.ask("What should you order for me at the cafe?", "update", [marks["drink1"]], d1)
    c.ask("Which city did I live in before the move?", "fact", [marks["city0"]], c0)
    c.ask(f"When is my {p['appt'][0]} appointment?", "temporal", [appt_turn], appt_when)
    c.ask(f"{user}: We're thinking of getting another pet. {A}: How exciting! What kind? {user}: Not sure yet, "
          f"would it get along with the one I have?", "chat", [marks["pet"]], f"a {species} called {name}")
    c.ask(f"{user}: I'm hosting friends on Saturday. {A}: Lovely! Do you need help with the menu? {user}: Yes, "
          f"what could I make that I can eat too?", "chat", [marks["diet"], marks["allergy"]],
          f"{p['diet'][2]}, without {p['allergy'][0]}")
    return {"id": f"u{cid + 1}", "speakers": [user, A], "sessions": c.sessions, "queries": c.queries}


def generate(seed: int = 23, n_conversations: int = 10) -> dict[str, Any]:
    rng = random.Random(seed)
    convs = [build(rng, i, USERS[i % len(USERS)]) for i in range(n_conversations)]
    return {"name": f"assistant-prefs (seed {seed})",
            "license": "CC0-1.0 (generated by benchmarks/make_assistant_prefs.py)", "conversations": convs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--conversations", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "assistant_prefs.json"))
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
