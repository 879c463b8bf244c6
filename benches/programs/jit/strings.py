def build(n):
    parts = []
    for i in range(n):
        parts.append(f"Step {i}: check item {i % 7}.")
    text = "\n".join(parts)
    return len(text)


def main(n):
    return build(n)
