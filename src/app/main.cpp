// doppler CLI entry point. Subcommands live in cmd_*.cpp and register themselves in commands.h.
#include <cstdio>

#include "app/commands.h"

int main(int argc, char** argv) { return doppler::app::runMain(argc, argv); }
