"""Lexicons for grounded caption metrics: object words (with synonyms and plurals), attribute
and relation words, and the ground-truth objects of a split. `SYNTHETIC` holds the embedded
world's words; `COCO` the 80 COCO categories with CHAIR's synonym lists (Rohrbach et al., EMNLP
2018) and common colour and spatial words. `parse_caption` reads the objects and relations a
caption states; the metrics and the world (`mmlab.data.world`) both judge captions through it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

ARTICLES = frozenset({"a", "an"})


def words(text: str) -> tuple[str, ...]:
    """The words of a table written as text, in order."""
    return tuple(text.split())


def pairs(text: str) -> dict[str, str]:
    """`key: value, key: value, ...` as a dict, in order (keys and values may hold spaces)."""
    items = (item.split(":") for item in text.split(",") if item.strip())
    return {key.strip(): value.strip() for key, value in items}


def synonym_table(text: str) -> dict[str, tuple[str, ...]]:
    """One `category: synonym, synonym, ...` a line (an indented line continues the one above),
    as CHAIR's synonyms.txt lists them."""
    table: dict[str, tuple[str, ...]] = {}
    for entry in re.split(r"\n(?=\S)", text.strip()):
        category, _, synonyms = entry.partition(":")
        table[category] = tuple(s.strip() for s in synonyms.split(",") if s.strip())
    return table


# After a word that is both a colour and an object ("orange"), one of these or the end of the
# caption means the object ("an orange on a plate"); any other word the colour ("an orange suit").
_OBJECT_FOLLOWERS = frozenset(
    "on in at with and or of is are was next near by to from beside behind under above below "
    "sitting lying standing that which".split()
)


@dataclass(frozen=True)
class Lexicon:
    """Object words (surface -> canonical object), attribute words (surface -> (kind, value))
    and relation words (surface -> canonical relation); surfaces may be several words."""

    name: str
    objects: Mapping[str, str]
    attributes: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    relations: Mapping[str, str] = field(default_factory=dict)
    object_kind: str = "object"  # the phrase kind of object words ("shape" in the synthetic world)

    @cached_property
    def phrases(self) -> dict[str, tuple[str, str]]:
        """Every surface -> (kind, canonical): the table `parse_caption` reads."""
        out = {w: ("relation", r) for w, r in self.relations.items()}
        out |= dict(self.attributes)
        out |= {w: (self.object_kind, o) for w, o in self.objects.items() if w not in out}
        return out

    @cached_property
    def _longest(self) -> int:
        return max(len(p.split()) for p in self.phrases)

    def words(self, caption: str) -> list[str]:
        """The caption's lower-case words, articles dropped."""
        return [w for w in re.findall(r"[a-z]+", caption.lower()) if w not in ARTICLES]

    def objects_in(self, caption: str) -> list[str]:
        """Canonical objects the caption names, in order with repeats, longest phrase first; a
        colour-and-object word is the object only before a function word or at the end."""
        words, found = self.words(caption), []
        for _, _, start, end in _phrases(caption, self.phrases, self._longest):
            phrase = " ".join(words[start:end])
            after = words[end] if end < len(words) else None
            if phrase in self.objects and (
                phrase not in self.attributes or after is None or after in _OBJECT_FOLLOWERS
            ):
                found.append(self.objects[phrase])
        return found

    def canonical(self, name: str) -> str:
        """The canonical object of a category, synonym or plural; unknown names come back lower-cased."""
        key = name.lower().strip()
        return self.objects.get(key, key)


# ----------------------------------------------------------------------------- plurals
_IRREGULAR = pairs(
    """
    person: people, man: men, woman: women, child: children, mouse: mice, knife: knives,
    foot: feet, sheep: sheep, ox: oxen, goose: geese, calf: calves, scissors: scissors,
    skis: skis, people: people, children: children, cattle: cattle, oxen: oxen, bison: bison,
    fowl: fowl, quail: quail, luggage: luggage, broccoli: broccoli
    """
)


def plural(word: str) -> str:
    """English plural of a (last) word: irregulars, -men, -es after s/x/z/ch/sh, -ies."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("man") and len(word) > 3:
        return word[:-3] + "men"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def with_plurals(synonyms: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """{canonical: [synonyms]} -> {surface: canonical}, with the plural of each surface."""
    out: dict[str, str] = {}
    for canonical, words in synonyms.items():
        for word in (canonical, *words):
            word = word.lower()
            head, _, last = word.rpartition(" ")
            for form in (word, f"{head} {plural(last)}".strip()):
                out.setdefault(form, canonical)
    return out


# ----------------------------------------------------------------------------- COCO / CHAIR
# The 80 COCO categories and CHAIR's synonyms for each (Rohrbach et al. 2018, data/synonyms.txt;
# misspellings such as "knive" and "solider" are CHAIR's, to catch captions that make them).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = synonym_table(
    """
person: girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby,
    worker, passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male,
    female, guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder,
    skater, skateboarder, foreigner, caller, offender, coworker, trespasser, patient,
    politician, soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief,
    buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
bicycle: bike, unicycle, minibike, trike
car: automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle: scooter, motor bike, motor cycle, motorbike, moped
airplane: jetliner, plane, air plane, monoplane, aircraft, jet, airbus, biplane, seaplane
bus: minibus, trolley
train: locomotive, tramway, caboose
truck: pickup, lorry, hauler, firetruck
boat: ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht,
    kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft,
    tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, steamboat,
    riverboat, battleship, steamship
traffic light: street light, traffic signal, stop light, streetlight, stoplight
fire hydrant: hydrant
stop sign:
parking meter:
bench: pew
bird: ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron,
    hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird,
    woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, gull, swan,
    bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, rooster,
    sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, cockatiel,
    lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird
cat: kitten, feline, tabby
dog: puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie,
    pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog,
    weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky
horse: colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale,
    bronc, bronco
sheep: lamb, ram, goat, ewe
cow: cattle, oxen, ox, calf, holstein, heifer, buffalo, bull, zebu, bison
elephant:
bear: panda
zebra:
giraffe:
backpack: knapsack
umbrella:
handbag: wallet, purse, briefcase
tie: bow, bow tie
suitcase: suit case, luggage
frisbee:
skis: ski
snowboard:
sports ball: ball
kite:
baseball bat:
baseball glove:
skateboard:
surfboard: longboard, skimboard, shortboard, wakeboard
tennis racket: racket
bottle:
wine glass:
cup:
fork:
knife: pocketknife, knive
spoon:
bowl: container
banana:
apple:
sandwich: burger, sub, cheeseburger, hamburger
orange:
broccoli:
carrot:
hot dog:
pizza:
donut: doughnut, bagel
cake: cheesecake, cupcake, shortcake, coffeecake, pancake
chair: seat, stool
couch: sofa, recliner, futon, loveseat, settee, chesterfield
potted plant: houseplant
bed:
dining table: table, desk
toilet: urinal, commode, lavatory, potty
tv: monitor, televison, television
laptop: computer, notebook, netbook, lenovo, macbook, laptop computer
mouse:
remote:
keyboard:
cell phone: mobile phone, phone, cellphone, telephone, phon, smartphone, iphone
microwave:
oven: stovetop, stove, stove top oven
toaster:
sink:
refrigerator: fridge, freezer
book:
clock:
vase:
scissors:
teddy bear: teddybear
hair drier: hairdryer
toothbrush:
"""
)

COLOUR_WORDS = words(
    """
    red orange yellow green blue purple pink brown black white grey gray silver gold
    """
)
SIZE_WORDS = ("small", "large", "big", "little", "tiny", "huge")
SPATIAL_WORDS = pairs(
    """
    left of: left, to the left of: left, right of: right, to the right of: right, above: above,
    over: above, below: below, under: below, beneath: below, on top of: on, on: on, in: in,
    inside: in, next to: beside, beside: beside, near: near, behind: behind, in front of: front
    """
)


def _coco() -> Lexicon:
    attributes = {w: ("colour", "grey" if w == "gray" else w) for w in COLOUR_WORDS}
    attributes |= {w: ("size", w) for w in SIZE_WORDS}
    return Lexicon("coco", with_plurals(COCO_SYNONYMS), attributes, dict(SPATIAL_WORDS))


def _synthetic() -> Lexicon:
    from mmlab.data.synthetic import SYNONYMS

    by_kind: dict[str, dict] = {}
    for (kind, value), words in SYNONYMS.items():
        for word in words:
            by_kind.setdefault(kind, {})[word] = value
    attributes = {w: (k, v) for k in ("colour", "size") for w, v in by_kind[k].items()}
    return Lexicon("synthetic", by_kind["shape"], attributes, by_kind["relation"], "shape")


LEXICONS = {"synthetic": _synthetic, "coco": _coco}
_built: dict[str, Lexicon] = {}


def get(name: str) -> Lexicon:
    """A lexicon by name; an unknown name lists the valid ones."""
    if name not in LEXICONS:
        raise KeyError(f"unknown lexicon {name!r}; valid: {', '.join(LEXICONS)}")
    if name not in _built:
        _built[name] = LEXICONS[name]()
    return _built[name]


def has_scenes(split) -> bool:
    """Whether a split has the synthetic world's `objects` column. Code outside `mmlab.data` asks
    `mmlab.data.world_of` instead."""
    if "objects" not in split.column_names:
        return False
    feature = split.features["objects"]
    inner = getattr(feature, "feature", None)  # List(struct) / Sequence(struct)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return isinstance(inner, Mapping) and "shape" in inner


def for_dataset(ds) -> Lexicon:
    """The synthetic lexicon for data with synthetic scenes, else the COCO lexicon."""
    first = next(iter(ds.values())) if isinstance(ds, Mapping) else ds
    return get("synthetic" if has_scenes(first) else "coco")


def ground_truth(split, lexicon: Lexicon) -> dict[str, object]:
    """id -> the objects of each image: its synthetic scene, else its COCO instance categories, else
    the objects its references mention."""
    ids = [str(i) for i in split["id"]]
    if has_scenes(split):
        return dict(zip(ids, split["objects"], strict=True))
    if "categories" in split.column_names:
        found = [sorted({lexicon.canonical(c) for c in cats}) for cats in split["categories"]]
    else:
        found = [
            sorted({o for caption in captions for o in lexicon.objects_in(caption)})
            for captions in split["captions"]
        ]
    return dict(zip(ids, found, strict=True))


# ----------------------------------------------------------------------------- caption parsing
# An object is "[size] colour [size] shape"; a relation places the first object relative to the
# second. Parsing lives beside its words so the world judges captions without the metrics.
@dataclass(frozen=True)
class Mention:
    colour: str
    shape: str
    size: str | None
    start: int  # word positions in the caption: [start, end)
    end: int

    @property
    def look(self) -> tuple[str, str]:
        """(colour, shape): what tells the objects of a synthetic scene apart."""
        return self.colour, self.shape


@dataclass(frozen=True)
class Relation:
    first: Mention
    relation: str
    second: Mention


def phrase_table(lexicon=None) -> Mapping[str, tuple[str, str]]:
    """The {surface: (kind, value)} table of a `Lexicon` (default: synthetic) or of a plain table."""
    if lexicon is None:
        lexicon = get("synthetic")
    return getattr(lexicon, "phrases", lexicon)


def _phrases(
    caption: str, lexicon: Mapping[str, tuple[str, str]], longest: int = 0
) -> list[tuple[str, str, int, int]]:
    """(kind, canonical, start, end) of every phrase, longest match first (`longest`: the most
    words of a phrase, if known); articles are dropped first so that "A left of a B" is adjacent."""
    words = [w for w in re.findall(r"[a-z]+", caption.lower()) if w not in ARTICLES]
    longest = longest or max(len(p.split()) for p in lexicon)
    found, i = [], 0
    while i < len(words):
        for span in range(min(longest, len(words) - i), 0, -1):
            hit = lexicon.get(" ".join(words[i : i + span]))
            if hit:
                found.append((*hit, i, i + span))
                i += span
                break
        else:
            i += 1
    return found


def parse_caption(caption: str, lexicon=None) -> tuple[list[Mention], list[Relation]]:
    """The objects a caption names and the relations between neighbouring ones, via `lexicon`.
    Words must be adjacent: "big red circle" is a mention, "red and a circle" is not; "A left of
    B" needs the relation phrase right between A and B."""
    phrases = _phrases(caption, phrase_table(lexicon))
    items: list = []  # mentions and the phrases between them, in caption order
    i = 0
    while i < len(phrases):
        mention, i_next = _mention_at(phrases, i)
        items.append(mention or phrases[i])
        i = i_next if mention else i + 1
    mentions = [m for m in items if isinstance(m, Mention)]
    relations = [
        Relation(a, rel[1], b)
        for a, rel, b in zip(items, items[1:], items[2:], strict=False)
        if isinstance(a, Mention)
        and isinstance(b, Mention)
        and isinstance(rel, tuple)
        and rel[0] == "relation"
        and a.end == rel[2]
        and rel[3] == b.start
    ]
    return mentions, relations


def _mention_at(phrases, i: int) -> tuple[Mention | None, int]:
    """A mention starting at phrase i: size? colour size? shape, each word right after the last."""
    attrs: dict[str, str] = {}
    start, end, j = phrases[i][2], phrases[i][2], i
    for kind in ("size", "colour", "size", "shape"):
        phrase = phrases[j] if j < len(phrases) else None
        if phrase and phrase[0] == kind and phrase[2] == end and kind not in attrs:
            attrs[kind] = phrase[1]
            end, j = phrase[3], j + 1
    if "colour" in attrs and "shape" in attrs:
        return Mention(attrs["colour"], attrs["shape"], attrs.get("size"), start, end), j
    return None, i
