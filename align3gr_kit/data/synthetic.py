"""The kit's generated default dataset: a small, seeded, realistic store.

Why generated: the real benchmark sets may not be redistributed (MovieLens) or lack text here
(Instruments), yet every stage needs items with text, users with profiles, sequences and ratings.
The generator plants structure that each level of Align3GR can find, and keeps the ground truth:

* 8 top categories x 3 sub-categories, each with its own vocabulary (nouns, adjectives, features)
  and brands; titles and descriptions are composed from them (``items.category`` = ground truth).
* Item popularity is Zipf-like (a long tail), shuffled within each category.
* Users have 1-3 interest categories with weights, an age band and a persona that correlate with
  those interests, a favourite brand, and a profile text stating all of it.
* Sequences: the next item stays in the previous item's category with probability 0.65 (and then
  in its sub-category with probability 0.5), else follows the user's interests, else (8%) explores a
  random category; no item repeats within a user. Timestamps increase by random gaps.
* Ratings 1-5 come from user-item affinity (interest weight, favourite brand, item quality, noise),
  so explored off-interest items tend to be disliked and favourite items liked: all three
  feedback levels of RF-DPO occur. :func:`generate_with_truth` also returns every user's noise-free
  rating of every item (the ground truth of :class:`align3gr_kit.feedback.GroundTruthOracle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from align3gr_kit.data.schema import RecDataset, make_interactions, make_items, make_users

CATALOGUE: dict[str, dict] = {
    "Guitars": {
        "subs": ["Electric Guitars", "Acoustic Guitars", "Bass Guitars"],
        "nouns": ["stratocaster", "telecaster", "dreadnought", "archtop", "bass guitar", "fretless bass"],
        "adjs": ["vintage", "solid-body", "six-string", "maple-neck", "sunburst", "semi-hollow"],
        "features": ["alnico pickups", "rosewood fretboard", "spruce top", "tremolo bridge", "locking tuners"],
        "brands": ["Fendmore", "Gibstone", "Ibanova"],
        "personas": ["guitarist", "songwriter", "rock musician"],
    },
    "Keyboards": {
        "subs": ["Digital Pianos", "Synthesizers", "MIDI Controllers"],
        "nouns": ["digital piano", "stage piano", "synthesizer", "workstation", "MIDI controller", "pad controller"],
        "adjs": ["88-key", "weighted", "analog", "polyphonic", "portable", "velocity-sensitive"],
        "features": ["hammer action keys", "arpeggiator", "USB MIDI", "built-in speakers", "sequencer"],
        "brands": ["Yamako", "Korgan", "Rolandia"],
        "personas": ["pianist", "music producer", "keyboard player"],
    },
    "Drums": {
        "subs": ["Drum Kits", "Cymbals", "Percussion"],
        "nouns": ["drum kit", "snare drum", "crash cymbal", "hi-hat", "cajon", "bongos"],
        "adjs": ["five-piece", "maple-shell", "bronze", "hand-hammered", "electronic", "birch"],
        "features": ["mesh heads", "chrome hardware", "brilliant finish", "double bass pedal", "sound module"],
        "brands": ["Pearlite", "Zildane", "Tamara"],
        "personas": ["drummer", "percussionist", "band member"],
    },
    "Studio": {
        "subs": ["Microphones", "Audio Interfaces", "Studio Monitors"],
        "nouns": ["condenser mic", "vocal mic", "audio interface", "preamp", "studio monitor", "headphones"],
        "adjs": ["condenser", "dynamic", "cardioid", "24-bit", "studio-grade", "low-noise"],
        "features": ["phantom power", "XLR input", "flat frequency response", "zero-latency monitoring", "shock mount"],
        "brands": ["Shurely", "Focusrise", "Audiotek"],
        "personas": ["sound engineer", "podcaster", "home-studio producer"],
    },
    "Strings": {
        "subs": ["Violins", "Cellos", "Ukuleles"],
        "nouns": ["violin", "viola", "cello", "cello bow", "ukulele", "mandolin"],
        "adjs": ["full-size", "handcrafted", "soprano", "concert", "ebony-fitted", "student"],
        "features": ["horsehair bow", "carved spruce top", "fine tuners", "hard case", "rosin included"],
        "brands": ["Stentorio", "Kalamar", "Cremonia"],
        "personas": ["violinist", "orchestra player", "music student"],
    },
    "Wind": {
        "subs": ["Saxophones", "Flutes", "Trumpets"],
        "nouns": ["saxophone", "sax mouthpiece", "flute", "piccolo", "trumpet", "cornet"],
        "adjs": ["alto", "tenor", "brass", "silver-plated", "lacquered", "B-flat"],
        "features": ["high F-sharp key", "open-hole keys", "rose brass leadpipe", "reeds included", "padded gig bag"],
        "brands": ["Selmark", "Jupitero", "Bachman"],
        "personas": ["saxophonist", "jazz musician", "brass player"],
    },
    "Amplifiers": {
        "subs": ["Guitar Amps", "Bass Amps", "Effects Pedals"],
        "nouns": ["combo amp", "amp head", "bass amp", "bass cabinet", "distortion pedal", "delay pedal"],
        "adjs": ["tube", "solid-state", "100-watt", "boutique", "true-bypass", "compact"],
        "features": ["12-inch speaker", "spring reverb", "footswitch", "tap tempo", "effects loop"],
        "brands": ["Marshale", "Vox-on", "Boss-Tone"],
        "personas": ["gigging guitarist", "tone chaser", "metal musician"],
    },
    "DJ": {
        "subs": ["DJ Controllers", "Turntables", "Lighting"],
        "nouns": ["DJ controller", "DJ mixer", "turntable", "phono cartridge", "stage light", "fog machine"],
        "adjs": ["two-channel", "direct-drive", "LED", "battery-powered", "club-ready", "wireless"],
        "features": ["jog wheels", "pitch fader", "DMX control", "performance pads", "Bluetooth streaming"],
        "brands": ["Pioneero", "Numarko", "Chauvix"],
        "personas": ["DJ", "party host", "electronic music fan"],
    },
}
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55+"]


@dataclass
class SyntheticTruth:
    """What the generator knows and the dataset does not show: how every user would rate every item.

    Indexed by the GENERATED ids (``raw_id`` ``U00012`` is user 12, ``I00007`` item 7).

    Attributes:
        interests: ``[n_users, 8]`` each user's interest weight per top category.
        favourite_brand: ``[n_users]`` each user's favourite brand.
        item_category: ``[n_items]`` each item's top category (index into ``CATALOGUE``).
        brand: ``[n_items]`` each item's brand.
        quality: ``[n_items]`` each item's quality.
        noise: ``[n_interactions]`` the rating noise drawn for each generated interaction, in the
            generated table's row order: logged rating = ``clip(rint(expected(u, i) + noise), 1, 5)``.
    """

    interests: np.ndarray
    favourite_brand: np.ndarray
    item_category: np.ndarray
    brand: np.ndarray
    quality: np.ndarray
    noise: np.ndarray

    def expected(self, user_ids, item_ids) -> np.ndarray:
        """Noise-free ratings ``1.3 + 2 * affinity`` of aligned users/items (arrays ``[n]`` or scalars), before
        rounding and clipping; affinity = 1.5 x the user's interest in the item's category + 0.6 if it is
        the user's favourite brand + the item's quality. The generator draws every rating from it."""
        u, i = np.asarray(user_ids), np.asarray(item_ids)
        affinity = (1.5 * self.interests[u, self.item_category[i]] + 0.6 * (self.brand[i] == self.favourite_brand[u])
                    + self.quality[i])
        return 1.3 + 2.0 * affinity


def generate_synthetic(n_users: int = 1000, n_items: int = 500, seed: int = 0,
                       mean_length: float = 12.0) -> RecDataset:
    """Generate the default dataset (see the module docstring for what it plants).

    Args:
        n_users: users to make (each gets at least 5 interactions).
        n_items: catalogue size (at least 24: one per sub-category).
        seed: the generator's only source of randomness; the same seed gives the same tables.
        mean_length: mean interactions per user.
    Returns:
        A validated :class:`RecDataset` named ``synthetic`` with ratings; ``extra["generator"]`` holds
        the arguments, from which :func:`generate_with_truth` rebuilds the ground truth.
    """
    return generate_with_truth(n_users, n_items, seed, mean_length)[0]


def generate_with_truth(n_users: int = 1000, n_items: int = 500, seed: int = 0,
                        mean_length: float = 12.0) -> tuple[RecDataset, SyntheticTruth]:
    """:func:`generate_synthetic`'s dataset and the generator's ground truth behind its ratings.

    The truth is rebuilt by re-running the generator (under a second for the default size) rather
    than stored in the dataset, so a dataset saved before it existed has one too.
    """
    if n_items < 24 or n_users < 1:
        raise ValueError(f"synthetic data needs n_items >= 24 and n_users >= 1, got {n_items}, {n_users}")
    rng = np.random.default_rng(seed)
    cats = list(CATALOGUE)
    n_cat = len(cats)

    # --- items -----------------------------------------------------------------------------
    item_cat = np.concatenate([np.arange(n_cat), rng.integers(0, n_cat, n_items - n_cat)])
    item_cat = rng.permutation(item_cat)
    item_sub = rng.integers(0, 3, n_items)
    quality = rng.normal(0.0, 0.5, n_items)
    popularity = np.empty(n_items)
    rows = []
    used_titles: set[str] = set()
    for c in range(n_cat):
        idx = np.flatnonzero(item_cat == c)
        popularity[idx] = 1.0 / (1.0 + rng.permutation(len(idx))) ** 1.1 + 0.02  # floor: no dead items
    for i in range(n_items):
        spec = CATALOGUE[cats[item_cat[i]]]
        sub = spec["subs"][item_sub[i]]
        brand = spec["brands"][rng.integers(len(spec["brands"]))]
        noun = spec["nouns"][item_sub[i] * 2 + rng.integers(2)]  # nouns come in pairs, one pair per sub-category
        adj = spec["adjs"][rng.integers(len(spec["adjs"]))]
        title = f"{brand} {adj.title()} {noun.title()} {rng.choice(list('ABCDEFGHKMRSTX'))}{rng.integers(10, 999)}"
        while title in used_titles:
            title += f"-{rng.integers(2, 9)}"
        used_titles.add(title)
        feats = rng.choice(spec["features"], size=2, replace=False)
        article = "An" if adj[0].lower() in "aeiou8" else "A"
        description = (f"{article} {adj} {noun} for {rng.choice(spec['personas'])}s, in our {sub.lower()} range. "
                       f"Features {feats[0]} and {feats[1]}.")
        rows.append({"raw_id": f"I{i:05d}", "title": title, "description": description,
                     "categories": [cats[item_cat[i]], sub], "brand": brand, "category": cats[item_cat[i]]})
    items = make_items(rows, "synthetic")

    # --- users -----------------------------------------------------------------------------
    user_rows, interests, fav_brand = [], [], []
    for u in range(n_users):
        k = rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2])
        chosen = rng.choice(n_cat, size=k, replace=False)
        w = np.zeros(n_cat)
        w[chosen] = rng.dirichlet(np.full(k, 2.0)) if k > 1 else 1.0
        interests.append(w)
        main = cats[chosen[np.argmax(w[chosen])]]
        persona = rng.choice(CATALOGUE[main]["personas"])
        brand = rng.choice(CATALOGUE[main]["brands"])
        fav_brand.append(brand)
        age = AGE_BANDS[min(len(AGE_BANDS) - 1, int(rng.gamma(2.0, 0.9)))]
        likes = " and ".join(cats[c].lower() for c in chosen[np.argsort(-w[chosen])])
        profile = f"A {age} year old {persona} interested in {likes}, who likes the {brand} brand."
        user_rows.append({"raw_id": f"U{u:05d}", "profile": profile,
                          "attributes": {"age_band": age, "persona": str(persona),
                                         "interests": ", ".join(cats[c] for c in chosen), "favourite_brand": str(brand)}})
    users = make_users(user_rows, "synthetic")
    interests = np.asarray(interests)

    # --- sequences, timestamps, ratings -----------------------------------------------------
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_cat)]
    brands = items["brand"].to_numpy()
    truth = SyntheticTruth(interests, np.asarray(fav_brand), item_cat, brands, quality, np.empty(0))
    uu, ii, tt, rr, noise = [], [], [], [], []
    for u in range(n_users):
        length = 5 + rng.poisson(max(mean_length - 5, 0.1))
        length = min(length, n_items // 2)
        seen: set[int] = set()
        t = int(1_600_000_000 + rng.integers(0, 30_000_000))
        prev = -1
        for _ in range(length):
            r = rng.random()
            if prev >= 0 and r < 0.65:
                c = item_cat[prev]
            elif r < 0.92:
                c = rng.choice(n_cat, p=interests[u])
            else:
                c = rng.integers(n_cat)
            cand = by_cat[c]
            if prev >= 0 and c == item_cat[prev] and rng.random() < 0.5:
                same_sub = cand[item_sub[cand] == item_sub[prev]]
                cand = same_sub if len(same_sub) else cand
            cand = np.array([x for x in cand if x not in seen])
            if len(cand) == 0:
                cand = np.array([x for x in range(n_items) if x not in seen])
            p = popularity[cand] / popularity[cand].sum()
            item = int(rng.choice(cand, p=p))
            seen.add(item)
            t += int(rng.exponential(86_400 * 5)) + 60
            eps = rng.normal(0.0, 0.8)
            noise.append(eps)
            score = truth.expected(u, item) + eps
            uu.append(u), ii.append(item), tt.append(t), rr.append(float(np.clip(np.rint(score), 1, 5)))
            prev = item
    inter = make_interactions(uu, ii, tt, rr)
    ds = RecDataset("synthetic", items, users, inter, source="generated",
                    extra={"generator": {"n_users": n_users, "n_items": n_items, "seed": seed, "mean_length": mean_length}})
    truth.noise = np.asarray(noise, dtype=np.float64)
    return ds.validate(), truth
