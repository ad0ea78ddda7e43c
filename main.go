// Command debusine-signing is a signing service for the Debusine build system.
package main

func main() {}
