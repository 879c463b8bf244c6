def score(candidate, reference):
    words = candidate.split(" ")
    hits = 0
    for w in words:
        if w in reference:
            hits += 1
    return hits * 100 - len(candidate)


def main(n):
    reference = {"the": 1, "cat": 1, "sat": 1, "on": 1, "mat": 1}
    templates = ["the cat sat", "a dog ran on the mat", "the mat", "cats sit on mats", "on the cat"]
    best = ""
    best_score = -1000000
    for i in range(n):
        candidate = templates[i % 5] + " " + str(i % 13)
        s = score(candidate, reference)
        if s > best_score:
            best_score = s
            best = candidate
    return best
