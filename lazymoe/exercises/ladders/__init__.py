"""Per lab: its exercises' hint ladders, fill-in versions, solutions and wrong answers.

Each module holds `EXERCISES`, a list of `lazymoe.exercises.solutions.Exercise` in notebook order.
The solution text is the reference a learner may ask to see; it is only ever *executed* by the
notebook tests (LAZYMOE_SOLUTIONS=1).
"""
