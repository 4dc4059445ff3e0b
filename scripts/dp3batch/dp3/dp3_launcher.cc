// DP3 without Python: the dp3 wheel's libDP3, entered where the wheel's DP3.py enters it.
//
// DP3.py imports the `dp3` Python package (numpy with it) and then calls
// dp3::base::ExecuteFromCommandLine with its command line. This program calls the same
// function with the same arguments, and prints an exception the way DP3's own main does.
// Built by `python -m dp3batch.dp3.native` (make setup); see native.py.
#include <exception>
#include <iostream>

namespace dp3 {
namespace base {
void ExecuteFromCommandLine(int argc, char* argv[]);
}  // namespace base
}  // namespace dp3

int main(int argc, char* argv[]) {
  try {
    dp3::base::ExecuteFromCommandLine(argc, argv);
  } catch (const std::exception& error) {
    std::cerr << "\nstd exception detected: " << error.what() << std::endl;
    return 1;
  }
  return 0;
}
