// Prints llama.cpp's unicode_regex_split words for each input line "<pre>\t<hex text>" (hex, tab separated).
// Build: g++ -std=c++17 -O2 -I$LLAMA/src -o pretok_harness pretok_harness.cpp $LLAMA/src/unicode.cpp $LLAMA/src/unicode-data.cpp
#include "unicode.h"
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>
#include <map>
static std::string unhex(const std::string& h){ std::string o; for(size_t i=0;i+1<h.size();i+=2) o.push_back((char)std::stoi(h.substr(i,2),nullptr,16)); return o; }
static std::string hex(const std::string& s){ static const char* d="0123456789abcdef"; std::string o; for(unsigned char c: s){ o.push_back(d[c>>4]); o.push_back(d[c&15]); } return o; }
int main(){
  std::map<std::string, std::vector<std::string>> pres = {
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "\\p{N}+", "[0-9][0-9][0-9]"}},
    {"gpt2", {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"}},
    {"smollm", {"\\p{N}", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"}},
    {"llama3", {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
    {"qwen2", {"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
  };
  std::string line;
  while (std::getline(std::cin, line)) {
    auto tab = line.find('\t'); std::string pre = line.substr(0, tab); std::string text = unhex(line.substr(tab+1));
    auto words = unicode_regex_split(text, pres.at(pre), false);
    std::string out = pre;
    for (auto& w: words) { out += "\t"; out += hex(w); }
    std::cout << out << "\n";
  }
}
