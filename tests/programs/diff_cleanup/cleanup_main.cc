// Answers one line per command on stdin with the library's functions: `work X` (what
// cleanup_work returns, or what it threw and how many destructors have run), `caught X`,
// `stats` and `quit`.
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>

int cleanup_work(int x);
int cleanup_caught(int x);
extern int cleanup_destroyed;

int main()
{
    std::cout << "ready" << std::endl;
    std::string command;
    int x;
    while (std::cin >> command) {
        if (command == "quit")
            return 0;
        if (command == "stats") {
            std::cout << "destroyed " << cleanup_destroyed << std::endl;
            continue;
        }
        std::cin >> x;
        if (command == "caught") {
            std::cout << cleanup_caught(x) << std::endl;
            continue;
        }
        try {
            std::cout << cleanup_work(x) << std::endl;
        } catch (const std::range_error &e) {
            std::cout << e.what() << ", destroyed " << cleanup_destroyed << std::endl;
        }
    }
    return 1;
}
