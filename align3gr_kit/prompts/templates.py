"""Paraphrased instruction templates of the multi-task SFT data (LC-Rec style, Align3GR Figure 3).

Each key is one task variant; each value a list of paraphrases, one of which is drawn per example
(seeded). The first paraphrase of ``A`` is the evaluation and DPO prompt
(:func:`align3gr_kit.prompts.sequential_prompt`), so it is always in the training mix.

Placeholders:
    ``{user}`` / ``{User}``  "user <ua_1><ub_2><uc_3>" / "User <ua_1>..." when user SCIDs are injected,
                              "the user" / "The user" when they are not (the ablation switch);
    ``{for_user}``            " for user <ua_1>..." or "" (item-centric prompts);
    ``{history}``             item SCIDs, oldest first, comma separated;
    ``{titles}``              quoted titles, oldest first;
    ``{item}``, ``{title}``, ``{description}``, ``{profile}``, ``{query}``, ``{token}``, ``{about}``, ``{noun}``, ``{level}``.

Every prompt ends with a newline: the completion is tokenized on its own and appended, so the
model sees exactly the same prompt tokens in training and at inference (see
:mod:`align3gr_kit.model.encoding`).
"""

from __future__ import annotations

TEMPLATES: dict[str, list[str]] = {
    # A: sequential item prediction, SCID history -> next item SCID.
    "A": [
        "{User} has interacted with the following items in order: {history}. Which item will {user} interact with next?\n",
        "Here is the interaction history of {user}: {history}. Predict the next item.\n",
        "Given the items {user} engaged with, {history}, recommend the next item.\n",
        "{User} recently chose {history}. What should be recommended next?\n",
        "Interaction sequence of {user}: {history}\nNext item:\n",
    ],
    # B1: item alignment, title/description -> item SCID and item SCID -> title.
    "B1:title->scid": [
        "Which item{for_user} has the title \"{title}\"?\n",
        "Give the item ID of \"{title}\"{for_user}.\n",
        "An item is called \"{title}\". What is its ID{for_user}?\n",
        "Title: {title}\nItem ID{for_user}:\n",
    ],
    "B1:description->scid": [
        "Which item{for_user} matches this description: {description}\n",
        "Find the item{for_user} described as follows: {description}\n",
        "Description: {description}\nItem ID{for_user}:\n",
    ],
    "B1:scid->title": [
        "What is the title of item {item}{for_user}?\n",
        "Item {item}{for_user} is called what?\n",
        "Name the item {item}{for_user}.\n",
        "Item ID: {item}{for_user}\nTitle:\n",
    ],
    # B2: user alignment, profile -> user SCID (the answer, so never in its prompt) and back.
    "B2:profile->scid": [
        "Which user ID matches this profile: {profile}\n",
        "A user describes themselves as follows: {profile}. What is their user ID?\n",
        "User profile: {profile}\nUser ID:\n",
    ],
    "B2:scid->profile": [
        "Describe {user}.\n",
        "What do we know about {user}?\n",
        "Write the profile of {user}.\n",
    ],
    # C1-1: asymmetric, SCID history -> next item's title.
    "C1-1": [
        "{User} has interacted with {history}. What is the title of the next item {user} will choose?\n",
        "Given the history of {user}, {history}, name the next item (title only).\n",
        "Interaction sequence of {user}: {history}\nTitle of the next item:\n",
    ],
    # C1-2: asymmetric, title history -> next item SCID.
    "C1-2": [
        "{User} has interacted with the items titled {titles}. Which item will {user} interact with next?\n",
        "Titles of the items {user} chose, in order: {titles}. Predict the next item ID.\n",
        "History of {user} by title: {titles}\nNext item ID:\n",
    ],
    # C2: item prediction from intention, a search-style query -> item SCID.
    "C2": [
        "{User} is looking for {query}. Which item fits best?\n",
        "{User} searches for {query}. Recommend one item.\n",
        "Query from {user}: {query}\nBest matching item:\n",
    ],
    # C3: preference inference, SCID history -> a preference summary.
    "C3": [
        "{User} has interacted with {history}. Summarise the preferences of {user}.\n",
        "What does {user} like, judging by {history}?\n",
        "Interaction sequence of {user}: {history}\nPreferences:\n",
    ],
    # TS-Align (TS-Rec): one SCID token <-> a description of the items that carry it.
    "TS-Align:token->text": [
        "What do the {noun} with the token {token} have in common?\n",
        "Describe the {noun} whose ID contains {token}.\n",
        "Token: {token}\nMeaning:\n",
    ],
    "TS-Align:text->token": [
        "Which level-{level} token stands for {noun} about {about}?\n",
        "{Noun} about {about} share which level-{level} token?\n",
    ],
}

SCID_TASKS: tuple[str, ...] = ("A", "B1", "B2", "C1-1", "C1-2", "C2", "C3")
"""The Align3GR/LC-Rec tasks, in the order of the paper's Figure 3."""

OPTIONAL_TASKS: tuple[str, ...] = ("TS-Align",)
"""TS-Rec's token-semantics alignment (optional)."""

ALL_TASKS: tuple[str, ...] = SCID_TASKS + OPTIONAL_TASKS


def user_fields(user_scid: str | None) -> dict[str, str]:
    """The ``{user}``/``{User}``/``{for_user}`` placeholder values for one user SCID string (or none)."""
    if user_scid:
        return {"user": f"user {user_scid}", "User": f"User {user_scid}", "for_user": f" for user {user_scid}"}
    return {"user": "the user", "User": "The user", "for_user": ""}


def sequential_prompt(user_scid: str | None, history: list[str]) -> str:
    """The task-A prompt used for evaluation and DPO (first template, deterministic).

    Args:
        user_scid: the user's SCID string (``"<ua_1><ub_2><uc_3>"``) or ``None`` when user SCIDs are
            not injected.
        history: item SCID strings, oldest first.
    Returns:
        The prompt text, ending with a newline.
    """
    return TEMPLATES["A"][0].format(history=", ".join(history), **user_fields(user_scid))
