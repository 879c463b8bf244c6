def checksum(n):
    total = 0
    for i in range(n):
        for j in range(n):
            total = (total + i * j) % 1000003
    return total


def main(n):
    return checksum(n)
