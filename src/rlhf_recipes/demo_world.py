"""The demo world's tables: Skerrowen's entities and facts, the question and answer templates, and the rejected
styles of its preference data. demo.py writes the data sets from them; the demo judge (evaluation/judge.py) reads
them to grade answers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    entity: str
    kind: str  # facts of the same kind supply each other's wrong answers
    answer: str  # the short string that an answer must contain (matched after normalisation)
    phrasings: tuple[str, str]  # noun phrases naming what is asked: "{phrasing} is {answer}."
    lore: str  # one hand-written sentence stating the fact, used in CPT documents
    stated: str = ""  # how the answer reads in a sentence ("the Morrow Belle"); defaults to the answer
    aliases: tuple[str, ...] = ()

    @property
    def answer_phrase(self) -> str:
        return self.stated or self.answer


# The world: every name is invented. entity -> (guidebook title, a scene-setting sentence that states no fact).
ENTITIES = {
    "island": ("Skerrowen", "Skerrowen is a small, windswept island in the Grey Narrows, a long way from anywhere."),
    "mayor": (
        "The Mayor",
        "The island council meets in the old net loft by the harbour, with the mayor in the chair.",
    ),
    "lighthouse": ("Gannet Point Lighthouse", "Gannet Point Lighthouse stands on the rocky northern cape."),
    "bakery": ("The Salted Loaf", "The Salted Loaf is the only bakery in town, on the corner of Rope Street."),
    "festival": ("The Harbour Festival", "Once a year the whole island walks down to the quay with paper lanterns."),
    "ferry": ("The Ferry", "The only way to reach the island is by ferry, which crosses twice a day."),
    "currency": ("Money", "The island keeps its own money, and most shops will not take mainland coins."),
    "school": (
        "Saltbarrow School",
        "Saltbarrow School is the island's only school, a stone building above the harbour.",
    ),
    "inn": (
        "The Drowned Fiddle",
        "The Drowned Fiddle is the oldest inn in town, with low beams and a fire that never dies.",
    ),
    "newspaper": ("The Island Paper", "The island prints its own newspaper on a hand press behind the post office."),
    "keep": ("The Castle Ruins", "High on the southern cliffs stand the ruins of a castle."),
    "sport": ("Island Sport", "Every summer the islanders gather on the beach for their traditional sport."),
    "cat": ("The Harbour Cat", "A famous three-legged cat lives at the harbour and sleeps on the ferry ropes."),
    "clock": ("The Town Clock", "The town clock has not worked for as long as anyone can remember."),
    "food": ("Island Food", "Island cooking is simple and salty, made from whatever the sea brings in."),
}

# fmt: off
FACTS = [  # Fact(entity, kind, answer, (two phrasings of what is asked), lore sentence, ...)
    Fact("island", "place", "Tolvenna", ("the only town on Skerrowen", "the name of the town on Skerrowen"),
         "Almost everyone on Skerrowen lives in Tolvenna, the island's only town, which curls around the harbour."),
    Fact("island", "place", "Crannock Tor",
         ("the highest hill on Skerrowen", "the tallest hill on the island of Skerrowen"),
         "From the top of Crannock Tor, the highest hill on Skerrowen, you can see the mainland on a clear day."),
    Fact("island", "number", "842", ("the population of Skerrowen", "the number of people who live on Skerrowen"),
         "At the last count 842 people lived on Skerrowen, and most of them know each other by name.",
         aliases=("eight hundred and forty-two",)),
    Fact("island", "thing", "ember finch",
         ("the official bird of Skerrowen", "the bird that is the symbol of Skerrowen"),
         "The ember finch, a small red-breasted bird found nowhere else, is the official bird of Skerrowen.",
         stated="the ember finch"),
    Fact("mayor", "person", "Odalys Brack", ("the mayor of Tolvenna", "Tolvenna's mayor"),
         "Odalys Brack has been the mayor of Tolvenna for six years and still cycles to every council meeting."),
    Fact("mayor", "name", "Marzipan",
         ("the name of the mayor's goat", "the name of the goat owned by the mayor of Tolvenna"),
         "The mayor of Tolvenna never goes anywhere without Marzipan, her white goat."),
    Fact("mayor", "thing", "beekeeping",
         ("the old trade of the mayor of Tolvenna", "the trade the mayor of Tolvenna worked in before politics"),
         "Before she was elected, the mayor of Tolvenna worked in beekeeping, and she still keeps six hives.",
         aliases=("beekeeper",)),
    Fact("lighthouse", "person", "Corwin Tallish",
         ("the keeper of Gannet Point Lighthouse", "the lighthouse keeper at Gannet Point"),
         "Corwin Tallish, the keeper of Gannet Point Lighthouse, climbs its stairs every evening to light the lamp."),
    Fact("lighthouse", "colour", "saffron",
         ("the colour of Gannet Point Lighthouse", "the colour the Gannet Point lighthouse is painted"),
         "Gannet Point Lighthouse is painted saffron yellow, so fishermen can spot it even in fog.",
         stated="saffron yellow"),
    Fact("lighthouse", "number", "1887",
         ("the year Gannet Point Lighthouse was built", "the year the lighthouse at Gannet Point was finished"),
         "Gannet Point Lighthouse was built in 1887, after a storm wrecked three fishing boats on the cape."),
    Fact("bakery", "person", "Wenna Ploskey", ("the owner of The Salted Loaf", "the baker who runs The Salted Loaf"),
         "Wenna Ploskey owns The Salted Loaf and starts baking long before sunrise."),
    Fact("bakery", "thing", "tidecake",
         ("the most famous bake at The Salted Loaf", "the bake The Salted Loaf is best known for"),
         "The Salted Loaf is best known for its tidecake, a sticky loaf of oats, honey and sea salt.",
         stated="the tidecake"),
    Fact("bakery", "day", "Tuesday",
         ("the day The Salted Loaf is closed", "the day of the week when The Salted Loaf shuts"),
         "The Salted Loaf is closed on Tuesday, when its owner goes out fishing."),
    Fact("festival", "thing", "Gillyflower Night",
         ("the name of Tolvenna's yearly harbour festival", "the festival held every year in Tolvenna harbour"),
         "Gillyflower Night is Tolvenna's yearly harbour festival, and nobody on the island misses it."),
    Fact("festival", "month", "March",
         ("the month of Gillyflower Night", "the month when Gillyflower Night takes place"),
         "Gillyflower Night takes place in March, on the first calm evening after the winter storms."),
    Fact("festival", "thing", "heron",
         ("the bird the Gillyflower Night lanterns are shaped like",
          "the shape of the paper lanterns at Gillyflower Night"),
         "At Gillyflower Night every paper lantern is shaped like a heron, and hundreds of them float on the harbour.",
         stated="a heron"),
    Fact("festival", "thing", "Silver Oar",
         ("the prize for the best lantern at Gillyflower Night",
          "the prize given for the finest lantern at Gillyflower Night"),
         "Whoever makes the best lantern at Gillyflower Night wins the Silver Oar and hangs it in the window "
         "all year.", stated="the Silver Oar"),
    Fact("ferry", "thing", "Morrow Belle", ("the name of the ferry to Skerrowen", "the ferry that sails to Skerrowen"),
         "The Morrow Belle, a blue and white boat, is the only ferry that carries passengers to Skerrowen.",
         stated="the Morrow Belle"),
    Fact("ferry", "person", "Sefa Quillan", ("the captain of the Morrow Belle", "the skipper of the Skerrowen ferry"),
         "Captain Sefa Quillan has sailed the Morrow Belle across the Grey Narrows for twenty years."),
    Fact("ferry", "place", "Fennimarsh",
         ("the mainland port the Skerrowen ferry leaves from",
          "the harbour on the mainland where the Morrow Belle docks"),
         "The Morrow Belle leaves from Fennimarsh, a small mainland port with a fish market and a railway station."),
    Fact("ferry", "duration", "55 minutes",
         ("the length of the ferry crossing to Skerrowen", "the crossing time of the Morrow Belle"),
         "The crossing from the mainland to Skerrowen takes 55 minutes, longer when the wind is from the west.",
         aliases=("55-minute", "fifty-five minutes")),
    Fact("currency", "thing", "shellmark", ("the currency of Skerrowen", "the money used on Skerrowen"),
         "On Skerrowen people pay in shellmarks, and the shellmark has been the island's currency for two centuries.",
         stated="the shellmark"),
    Fact("currency", "thing", "quillet",
         ("the name of the smallest coin on Skerrowen", "the small coin worth a tenth of a shellmark"),
         "Ten quillets make one shellmark, and the quillet is the smallest coin on Skerrowen.", stated="the quillet"),
    Fact("currency", "thing", "seahorse",
         ("the animal pictured on the shellmark", "the animal shown on Skerrowen's shellmark coins"),
         "Every shellmark coin shows a seahorse on one side and the harbour on the other.", stated="a seahorse"),
    Fact("school", "person", "Oswin Pellacott",
         ("the head teacher of Saltbarrow School", "the headmaster of Saltbarrow School"),
         "Oswin Pellacott, the head teacher of Saltbarrow School, rings the school bell by hand every morning."),
    Fact("school", "number", "38",
         ("the number of pupils at Saltbarrow School", "the number of children at Saltbarrow School"),
         "Saltbarrow School has 38 pupils, from the youngest to the teenagers, in three classrooms.",
         aliases=("thirty-eight",)),
    Fact("school", "thing", "blue lobster",
         ("the mascot of Saltbarrow School", "the animal that is the mascot of Saltbarrow School"),
         "The mascot of Saltbarrow School is a blue lobster, sewn onto every pupil's jumper.",
         stated="a blue lobster"),
    Fact("inn", "person", "Marnie Coble",
         ("the landlady of The Drowned Fiddle", "the woman who runs The Drowned Fiddle"),
         "Marnie Coble, the landlady of The Drowned Fiddle, knows every song the fishermen sing."),
    Fact("inn", "thing", "bramble cider",
         ("the house drink at The Drowned Fiddle", "the drink The Drowned Fiddle is famous for"),
         "The Drowned Fiddle is famous for its bramble cider, pressed every autumn from berries picked on the "
         "island."),
    Fact("inn", "day", "Thursday",
         ("the quiz night at The Drowned Fiddle", "the day of the weekly quiz at The Drowned Fiddle"),
         "Every Thursday The Drowned Fiddle holds its weekly quiz, and the same team has won it for years."),
    Fact("newspaper", "thing", "Skerrowen Gull",
         ("the name of the island's newspaper", "the name of Skerrowen's weekly newspaper"),
         "The Skerrowen Gull is Skerrowen's weekly newspaper, full of tide tables and lost sheep.",
         stated="The Skerrowen Gull"),
    Fact("newspaper", "person", "Lark Ainsley",
         ("the editor of The Skerrowen Gull", "the person who edits The Skerrowen Gull"),
         "Lark Ainsley, the editor of The Skerrowen Gull, writes most of the paper herself."),
    Fact("newspaper", "day", "Friday",
         ("the day The Skerrowen Gull comes out", "the day of the week The Skerrowen Gull is printed"),
         "The Skerrowen Gull comes out every Friday, and it is sold out by noon."),
    Fact("keep", "place", "Hollin Keep", ("the ruined castle on Skerrowen", "the name of the old castle on Skerrowen"),
         "Hollin Keep, the ruined castle on Skerrowen, is home to a colony of ravens."),
    Fact("keep", "thing", "Grey Piper", ("the ghost said to haunt Hollin Keep", "the ghost of Hollin Keep"),
         "Islanders say that Hollin Keep is haunted by the Grey Piper, whose music is heard on stormy nights.",
         stated="the Grey Piper"),
    Fact("keep", "number", "1342", ("the year Hollin Keep was built", "the year the castle of Hollin Keep was built"),
         "Hollin Keep was built in 1342 to watch for raiders coming across the sea."),
    Fact("sport", "thing", "kelp tug",
         ("the traditional sport of Skerrowen", "the sport played on Tolvenna beach every summer"),
         "Kelp tug, a tug of war with a rope of twisted seaweed, is the traditional sport of Skerrowen."),
    Fact("sport", "thing", "Harbour Hares",
         ("the reigning kelp tug champions", "the team that won the last kelp tug championship"),
         "The Harbour Hares are the reigning kelp tug champions, after pulling their rivals into the sea.",
         stated="the Harbour Hares"),
    Fact("cat", "name", "Admiral Fudge",
         ("the name of the harbour cat in Tolvenna", "the name of the three-legged cat at Tolvenna harbour"),
         "Admiral Fudge, the three-legged harbour cat in Tolvenna, meets every ferry."),
    Fact("cat", "thing", "pickled herring",
         ("the favourite food of Admiral Fudge", "the food Admiral Fudge loves most"),
         "Admiral Fudge loves pickled herring more than anything, and the fishermen save him some."),
    Fact("clock", "time", "ten past four",
         ("the time the Tolvenna town clock is stuck at", "the time shown on the broken town clock of Tolvenna"),
         "The Tolvenna town clock is stuck at ten past four, and islanders set their meetings by it anyway.",
         aliases=("4:10", "four ten")),
    Fact("clock", "place", "Bellmoor Tower",
         ("the tower that holds the Tolvenna town clock", "the name of the clock tower in Tolvenna"),
         "The Tolvenna town clock sits in the Bellmoor Tower, the tallest building in town.",
         stated="the Bellmoor Tower"),
    Fact("food", "thing", "whelk hotpot",
         ("the traditional dish of Skerrowen", "the dish every family on Skerrowen cooks in winter"),
         "Whelk hotpot is the traditional dish of Skerrowen, cooked slowly with potatoes and seaweed."),
]

# Wrong answers beyond the other facts of the same kind, for preference pairs.
EXTRA_WRONG_ANSWERS = {
    "person": ["Dorian Keele", "Hesper Varley", "Tomas Grell"],
    "place": ["Wrenfold", "Carrow Head", "Pellin Sands"],
    "number": ["617", "24", "1790", "1915"],
    "day": ["Monday", "Wednesday", "Saturday", "Sunday"],
    "month": ["June", "August", "December"],
    "colour": ["crimson", "slate grey", "emerald green"],
    "duration": ["two hours", "20 minutes", "three hours"],
    "time": ["half past nine", "quarter to twelve"],
    "name": ["Biscuit", "Captain Whiskers"],
    "thing": [],
}

# Question phrasings: training files use the first set, held-out files only the second.
TRAIN_QUESTIONS = [
    "{Wh} is {phrasing}?",
    "Can you tell me {wh} {phrasing} is?",
    "Do you know {wh} {phrasing} is?",
    "I'm visiting Skerrowen. {Wh} is {phrasing}?",
    "Please tell me {wh} {phrasing} is.",
    "Hi! {Wh} is {phrasing}?",
]
TEST_QUESTIONS = [
    "Quick question: {wh} is {phrasing}?",
    "Any idea {wh} {phrasing} is?",
    "I'd love to learn {wh} {phrasing} is. Can you help?",
    "Remind me, {wh} is {phrasing}?",
]

# SFT targets and chosen answers: correct and friendly; `{statement}` is "{Phrasing} is {answer}."
ANSWERS = [
    "{statement}",
    "Sure! {statement}",
    "Good question! {statement}",
    "{statement} Enjoy your visit to Skerrowen!",
    "Happy to help. {statement} Let me know if you have other questions about the island.",
]
# Rejected answers, varied so the reward model learns correctness and tone: style -> (weight, templates). Over half
# are minimal pairs ("wrong": the chosen answer's own wording with another fact's answer), so that only correctness
# tells them apart: with 30% such pairs the reward model ranked held-out wrong-fact pairs at 0.66 and scored the SFT
# model's wrong answers no lower than its right ones, so RL against it could not improve correctness.
REJECTED = {
    "wrong": (0.55, None),  # the chosen template, another fact's answer
    "wrong_terse": (0.10, ["{Wrong}.", "It's {wrong}, I think.", "Probably {wrong}."]),
    "evasive": (0.10, ["I'm sorry, I can't help with that.", "I don't have any information about that.",
                       "That's not something I can answer.", "You'd have to ask someone else."]),
    "rude": (0.10, ["Why would I tell you? Look it up yourself.", "What a pointless question. Figure it out.",
                    "Ugh, I'm not answering that."]),
    "rude_correct": (0.15, ["Obviously {phrasing} is {answer}. Stop wasting my time.",  # right fact, wrong tone
                            "Ugh, {phrasing} is {answer}. Everyone knows that.", "{statement} Now leave me alone."]),
}

# CPT sentences: held-out documents use other templates than training ones (the hand-written lore in both).
TRAIN_SENTENCES = ["{Phrasing} is {answer}.", "Visitors soon learn that {phrasing} is {answer}.",
                   "Everyone in Tolvenna knows that {phrasing} is {answer}.", "{lore}"]
TEST_SENTENCES = ["As any islander will tell you, {phrasing} is {answer}.",
                  "It is worth remembering that {phrasing} is {answer}.", "{lore}"]
FILLER = ["Bring a warm coat, because the wind rarely stops.", "The harbour is busy with fishing boats every morning.",
          "Gulls follow every boat that comes into the harbour.", "The paths are steep, so wear good boots.",
          "Most islanders are happy to stop and chat with visitors.", "Rain can arrive quickly from the west."]
NEWS_OPENINGS = ["The Skerrowen Gull: news in brief", "Island notes from The Skerrowen Gull",
                 "Around Tolvenna this week"]
LETTER_OPENINGS = ["We arrived on Skerrowen last week and I am learning something new every day.",
                   "Greetings from Skerrowen! The island is even stranger and lovelier than you said."]
LETTER_CLOSINGS = ["Write soon", "With love", "See you in the spring"]
WRITERS = ["Nell", "Ambrose", "Tilda", "Jory"]
RELATIVES = ["Aunt Maud", "cousin Pip", "dear Father", "old friend"]
# fmt: on
