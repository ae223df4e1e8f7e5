// Answers one line per command on stdin with the library's functions: `work X` (what
// cleanup_work returns, or what it threw and how many destructors have run), `caught X`,
// `tagged WORD`, `separator`, `counted X`, `digits X`, `kind X`, `stats` and `quit`.
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>

int cleanup_work(int x);
int cleanup_caught(int x);
int cleanup_counted(int x);
int cleanup_digits(int x);
int cleanup_kind(int x);
std::string cleanup_tagged(const char *m);
const char *cleanup_separator();
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
        if (command == "separator") {
            std::cout << '[' << cleanup_separator() << ']' << std::endl;
            continue;
        }
        if (command == "tagged") {
            std::string word;
            std::cin >> word;
            std::cout << cleanup_tagged(word.c_str()) << std::endl;
            continue;
        }
        std::cin >> x;
        if (command == "digits" || command == "kind") {
            std::cout << (command == "kind" ? cleanup_kind(x) : cleanup_digits(x)) << std::endl;
            continue;
        }
        if (command == "counted") {
            std::cout << cleanup_counted(x) << std::endl;
            continue;
        }
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
